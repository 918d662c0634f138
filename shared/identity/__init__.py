"""Identity stitching and merge policies: the profile store, maintained as batches arrive, and the unified
profiles segment jobs read from it."""

from shared.identity.policies import DEFAULT_POLICY, MergeMethod, MergePolicy, MergePolicyStore
from shared.identity.profiles import UnifiedProfiles
from shared.identity.store import ProfileStore, StoreVersion

__all__ = [
    "DEFAULT_POLICY",
    "MergeMethod",
    "MergePolicy",
    "MergePolicyStore",
    "ProfileStore",
    "StoreVersion",
    "UnifiedProfiles",
]
