"""Channel policy: which of a block's profiles reach a person, in which order, and how.

The block names the profiles that may be used; the person's ``channels.order`` puts them in the
order they want (profiles they do not list follow in the block's order). The policy is the block's
when it sets one, else the person's, else ``all``:

* ``all``: every usable profile and contact at once;
* ``first-available``: the first profile for which the person has contact info (every contact of
  that kind: two phones both ring);
* ``fallback``: one contact at a time; when a send fails for good, or the provider later reports it
  failed or undelivered, the next is tried (voice, then SMS, then email).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .profiles import NotificationProfile
from .users import User

ALL, FIRST_AVAILABLE, FALLBACK = "all", "first-available", "fallback"


@dataclass(frozen=True, slots=True)
class Link:
    """One hop of a chain: a profile and the contact it sends to (None for contactless profiles)."""

    profile: str
    contact_type: str | None = None
    contact: str | None = None

    def to_json(self) -> list[str | None]:
        return [self.profile, self.contact_type, self.contact]

    @classmethod
    def from_json(cls, data: list[str | None]) -> Link:
        profile, ctype, contact = data
        return cls(str(profile), ctype, contact)

    def __str__(self) -> str:
        return f"{self.profile} ({self.contact})" if self.contact else self.profile


@dataclass(slots=True)
class Plan:
    policy: str
    chains: list[list[Link]]  # each chain is sent on its own; its links are tried in turn
    missing: list[str]  # why a profile could not be used for this person


def ordered_profiles(user: User, profiles: list[str], preferred: list[str]) -> list[str]:
    """The block's profiles in the person's preferred order."""
    first = [p for p in preferred if p in profiles]
    return first + [p for p in profiles if p not in first]


def plan(user: User, profiles: list[str], available: Mapping[str, NotificationProfile],
         block_policy: str | None, user_policy: str | None, preferred: list[str]) -> Plan:
    policy = block_policy or user_policy or ALL
    usable: list[list[Link]] = []  # per profile, its links
    missing: list[str] = []
    for name in ordered_profiles(user, profiles, preferred):
        profile = available.get(name)
        if profile is None:
            missing.append(f"profile {name} is not configured")
            continue
        if not profile.contact_types:
            usable.append([Link(name)])
            continue
        links = [Link(name, t, c) for t in profile.contact_types for c in user.contacts.get(t, [])]
        if links:
            usable.append(links)
        else:
            missing.append(f"no {'/'.join(profile.contact_types)} contact for profile {name}")
    if not usable:
        return Plan(policy, [], missing)
    if policy == FALLBACK:
        return Plan(policy, [[link for links in usable for link in links]], missing)
    if policy == FIRST_AVAILABLE:
        return Plan(policy, [[link] for link in usable[0]], missing)
    return Plan(policy, [[link] for links in usable for link in links], missing)
