"""Jurisdictions: ISO 3166-1 alpha-2 country codes and named groups of them.

A jurisdiction token in a config is either a country code (``DE``) or the name of a group the
config defines (``EU: [AT, BE, ...]``). Both resolve to a frozenset of country codes. The special
token ``*`` (only allowed on the tenant side) means "any jurisdiction".

Containment is the only rule: a substrate is inside a tenant's allowed jurisdictions when *every*
country the substrate may execute in is allowed. A substrate declared as ``EU`` may run anywhere in
the EU, so a tenant allowed only ``DE`` must not use it. An empty set contains nothing and is inside
nothing: unknown is never admitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ANY_JURISDICTION = "*"

# ISO 3166-1 alpha-2, officially assigned codes.
ISO_COUNTRY_CODES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
    BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
    EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
    HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
    LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
    NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
    TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()
)


class UnknownJurisdiction(ValueError):
    """A token that is neither a country code nor a defined group."""


class JurisdictionCatalog:
    """Resolves jurisdiction tokens to sets of country codes, using the config's groups."""

    __slots__ = ("_groups",)

    def __init__(self, groups: Mapping[str, Iterable[str]]) -> None:
        self._groups: dict[str, frozenset[str]] = {
            name: frozenset(members) for name, members in groups.items()
        }

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(sorted(self._groups))

    def is_known(self, token: str) -> bool:
        return token in self._groups or token in ISO_COUNTRY_CODES

    def expand(self, token: str) -> frozenset[str]:
        """The countries a token stands for; raises UnknownJurisdiction for an undefined token."""
        if token == ANY_JURISDICTION:
            return ISO_COUNTRY_CODES
        group = self._groups.get(token)
        if group is not None:
            return group
        if token in ISO_COUNTRY_CODES:
            return frozenset((token,))
        raise UnknownJurisdiction(token)

    def expand_all(self, tokens: Iterable[str]) -> frozenset[str]:
        out: set[str] = set()
        for token in tokens:
            out |= self.expand(token)
        return frozenset(out)


def is_within(substrate_countries: frozenset[str], allowed_countries: frozenset[str]) -> bool:
    """True when the substrate can only execute in allowed countries. Empty never qualifies."""
    return bool(substrate_countries) and substrate_countries <= allowed_countries
