"""Offline preparation, run before any training: manifests (`manifest`), dataset presets (`presets`), webdataset
shards (`shards`) and the embedded demo dataset (`demo`). Nothing here runs inside a training step."""
