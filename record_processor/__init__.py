"""The child process the KCL MultiLangDaemon spawns for each shard: ``python -m record_processor``."""
