"""The store: feature shards (one file per model key, data shard and stage), finished results, and
sources that stream a split's stage shard by shard."""
from .shards import FeatureCache, cache_key, default_cache_dir
from .results import ResultCache, result_key

__all__ = ["FeatureCache", "ResultCache", "cache_key", "default_cache_dir", "result_key"]
