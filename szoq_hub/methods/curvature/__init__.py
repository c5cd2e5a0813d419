"""The curvature-aware SensZOQ method (`senszoq-curvature`): SensZOQ's values, a preconditioned ZO step."""
