"""Helpers shared by the deployment tests: a real Ray head (`ray_head`), manifest validation (`manifests`)."""
