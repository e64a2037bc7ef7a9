"""What tests share besides fixtures: a real S3 server (`s3`, which bench/ uses too), and for the
deployment tests a real Ray head (`ray_head`), the documented commands (`commands`) and manifest
validation (`manifests`)."""
