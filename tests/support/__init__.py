"""What tests share besides fixtures: `helpers` (the tiny config, jobs, the storage a scenario runs
over, report hooks, waits on Ray's state), `s3` (a real S3 server, which bench/ uses too), and for
the deployment tests a real Ray head (`ray_head`), the documented commands (`commands`) and manifest
validation (`manifests`)."""
