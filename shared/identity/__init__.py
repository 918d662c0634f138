"""Identity stitching and merge policies: from lake fragments to one unified profile per person."""

from shared.identity.policies import DEFAULT_POLICY, MergeMethod, MergePolicy, MergePolicyStore
from shared.identity.profiles import ProfileBuilder, UnifiedProfiles

__all__ = ["DEFAULT_POLICY", "MergeMethod", "MergePolicy", "MergePolicyStore", "ProfileBuilder", "UnifiedProfiles"]
