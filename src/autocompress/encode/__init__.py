"""Weight clustering (sharing) and the compressed, entropy-coded storage artifact."""

from autocompress.encode.archspec import ArchError, register_layer
from autocompress.encode.cluster import (ClusterConfig, cluster_, cluster_hooks, codebooks,
                                         kmeans_1d, strip_clusters_, sync_clusters)
from autocompress.encode.reader import artifact_info, load_compressed
from autocompress.encode.storage import StorageError, save_compressed

__all__ = ["ArchError", "ClusterConfig", "StorageError", "artifact_info", "cluster_", "cluster_hooks",
           "codebooks", "kmeans_1d", "load_compressed", "register_layer", "save_compressed",
           "strip_clusters_", "sync_clusters"]
