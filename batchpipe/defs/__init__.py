"""The Dagster surface, from names to Definitions: translator.py chooses every Dagster
name, specs.py the specs and code versions, assets.py the four steps and their checks,
sensors.py the sensor, job and schedule, resources.py the resource, metadata.py every
`batchpipe/` metadata and tag key they write and read, failures.py the `dg.Failure` a
BatchpipeError becomes, and build.py turns a folder of pipeline files into Definitions
any project can merge."""
