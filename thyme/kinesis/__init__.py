"""Running a KinesisSource: the KCL properties, the daemon launcher, local-stack helpers."""
