"""Per-member state and its fold ``apply(state, event) -> state``.

The same function runs in the stream worker (live state in Redis), in training (point-in-time replay of
an event log) and in tests. It is pure: no I/O, no clock. For speed it updates ``state`` in place and
returns it; callers that need the old value copy first (:func:`copy_state`).

Order independence (event time, not arrival time) is a design rule for every field:

- counts and sums are :class:`~features.decay.Decayed` counters (commutative);
- "last seen" times are maxima; attributes (tier, points, paid membership, consent, profile) are
  last-writer-wins by ``event_ts`` with the ``event_id`` as a tie-break;
- per-offer impression fatigue keeps the last few impression times and counts those after the last
  action at read time, instead of a running counter that a late event would corrupt.

Hence a shuffled stream folds to the same state as the sorted one. Exactly-once *delivery* of a Kafka
record is the adapter's job (offset watermarks, see ``infra/redis_layout.py``). A *producer* retry is a
second record with the same ``event_id``: the fold skips an event id it has already applied to this
member, within a bounded window (:data:`APPLIED_IDS_KEPT`, below).

Personalisation consent (:mod:`features.consent`). Every event has an *obligation* part, folded
whatever the member's consent, and a *behaviour* part, folded only for events at or after
:func:`collect_from` (consent on at their time and later than the latest opt-out). An opt-out clears the
behaviour fields (:func:`forget_behaviour`); an opt-in resumes collection from its time. What survives:

- consent itself: ``personalization_consent``, ``consent_set``, ``consent_log``;
- the membership contract, sent by the membership system: ``tier``, ``paid_*``, ``points*``, and
  ``growth_weeks`` (spend per week towards the next tier: week and amount, no items or categories);
- the profile the member gave the programme (birthday, region and tenure rules): ``birth_month``,
  ``region``, ``joined_ts``, ``profile_set``, and the business's declared ``attributes`` (read only by
  the model, which is off without consent); ``first_seen_ts`` (tenure fallback: a minimum no event
  during an opt-out can lower below the opt-out's own time);
- per offer, the caps and cool-downs (``claimed``), redemptions, the member's "not for me"
  (``dismissed``) and the impression times the frequency cap (``fatigue``) counts, i.e. what the service
  showed, not what the member did: ``claims``, ``last_claim_ts``, ``redeems``, ``dismisses``,
  ``last_dismiss_ts``, ``recent_shown_ts``, ``last_shown_ts``; ``coupon_claims_total``,
  ``coupon_redeems_total``;
- ``member_id``, ``applied`` (the retry window: event time and a hash of the id, no content) and
  ``events_folded`` (how many events were applied: replay and progress probes; no feature reads it).

Dropped while consent is off, and cleared by an opt-out: ``counts``, ``last_ts`` (hence days since
order), ``cat_interest``, ``cat_last_ts``, ``cat_orders``, ``spend``, ``items``, ``orders_total``,
``spend_total``, ``orders_with_coupon``, ``discount_total``, ``last_visit_ts``, ``visit_days`` (hence the
lifecycle stage), ``events_total``, ``last_event_ts``; per offer ``shown``, ``clicks``,
``last_click_ts``. A page view, search, add-to-cart or click during an opt-out changes only the retry
window and ``events_folded``. Order independence holds with the bound in :mod:`features.consent`: a late
consent change can lose behaviour, never keep any it should not.
"""

from __future__ import annotations

import bisect
import hashlib
import operator

import msgspec

from features import consent
from features import events as ev
from features.consent import ConsentChange
from features.decay import Decayed

#: Event kinds with a decayed count and a recency in the state.
COUNTED_KINDS: tuple[str, ...] = (
    "page_view",
    "search",
    "add_to_cart",
    "order",
    "coupon_claim",
    "coupon_redeem",
    "benefit_use",
    "consult_booked",
    "impression",
    "click",
    "dismiss",
)

#: Bounds that keep a member's blob small (a few KB) whatever the member does.
MAX_OFFERS_TRACKED = 96
IMPRESSION_TIMES_KEPT = 16
#: Event ids remembered per member to skip producer retries: those of the 64 latest events by
#: (event_ts, id hash). A duplicate is skipped unless 64 or more newer events of the member were folded
#: since the original (a retry comes seconds later, so in practice it always is). The window is a
#: function of the *set* of events folded, not their arrival order, so order independence holds.
#: Cost: 64 x (float + 64-bit hash), about 1.2 KB of a member's blob.
APPLIED_IDS_KEPT = 64
#: Distinct UTC days with member activity kept (the latest ones): enough to see the gap before a return
#: within :attr:`features.lifecycle.LifecycleConfig.returning_days` (at most 30).
VISIT_DAYS_KEPT = 32
#: Member-initiated events: a visit (impressions and dismissals can come from a push, so they are not).
VISIT_KINDS = frozenset(
    {"page_view", "search", "add_to_cart", "order", "click", "coupon_claim", "benefit_use", "consult_booked"}
)
#: Spend is kept per 7-day bucket (Unix week number) for the latest 56 weeks: growth value over a
#: rolling window of up to 392 days (:class:`features.lifecycle.TierRules`).
GROWTH_BUCKET_SECONDS = 7 * 86400.0
GROWTH_BUCKETS_KEPT = 56
#: Points lots with an expiry kept per member (a snapshot from ``points_changed``).
POINTS_LOTS_KEPT = 32
#: Categories are the operator's (any name an event carries); a member keeps at most this many.
MAX_CATEGORIES_TRACKED = 48
#: Declared member attributes kept per member (``profile_updated`` events).
MAX_ATTRIBUTES = 64


class OfferInteraction(msgspec.Struct, array_like=True, gc=False):
    """What one member did with one offer."""

    shown: int = 0
    last_shown_ts: float = 0.0
    clicks: int = 0
    claims: int = 0
    redeems: int = 0
    dismisses: int = 0
    last_click_ts: float = 0.0
    last_claim_ts: float = 0.0
    last_dismiss_ts: float = 0.0
    #: The latest impression times, newest last (bounded); used for "impressions since last action".
    recent_shown_ts: list[float] = []

    def last_action_ts(self) -> float:
        return max(self.last_click_ts, self.last_claim_ts, self.last_dismiss_ts)

    def impressions_since_action(self) -> int:
        action = self.last_action_ts()
        return sum(1 for t in self.recent_shown_ts if t > action)

    def touched_ts(self) -> float:
        return max(self.last_shown_ts, self.last_action_ts())


class _Attr(msgspec.Struct, array_like=True, gc=False):
    """A last-writer-wins attribute stamped with the event time and id that set it."""

    ts: float = 0.0
    event_id: str = ""


class Attribute(msgspec.Struct, array_like=True, gc=False):
    """One declared member attribute, last-writer-wins by (event_ts, event_id) per attribute."""

    value: ev.AttributeValue = None
    ts: float = 0.0
    event_id: str = ""


class MemberState(msgspec.Struct, gc=False, omit_defaults=True):
    """Everything the ranker knows about one member. Field names are part of the stored format."""

    member_id: str = ""
    counts: dict[str, Decayed] = {}
    last_ts: dict[str, float] = {}
    #: Browsing interest per category (page views and searches; add-to-cart weighs 3).
    cat_interest: dict[str, Decayed] = {}
    #: Latest browsing time per category (a maximum: order independent); premise of "browsed this week".
    cat_last_ts: dict[str, float] = {}
    #: Purchases per category (each order counts once per category it contains).
    cat_orders: dict[str, Decayed] = {}
    spend: Decayed = msgspec.field(default_factory=Decayed)
    items: Decayed = msgspec.field(default_factory=Decayed)
    orders_total: int = 0
    spend_total: float = 0.0
    orders_with_coupon: int = 0
    discount_total: float = 0.0
    coupon_claims_total: int = 0
    coupon_redeems_total: int = 0
    tier: str = "regular"
    tier_set: _Attr = msgspec.field(default_factory=_Attr)
    paid_member: bool = False
    #: Latest paid_membership_started time (a maximum).
    paid_since_ts: float = 0.0
    paid_set: _Attr = msgspec.field(default_factory=_Attr)
    #: Plan name and end of the paid membership per the latest start/renewal/end (0 = open-ended).
    paid_plan: str = ""
    #: The plan name is its own last-writer-wins attribute (an end event names no plan).
    plan_set: _Attr = msgspec.field(default_factory=_Attr)
    paid_expires_ts: float = 0.0
    #: When the latest paid_membership_ended said it ended (0 = never, or renewed since).
    paid_ended_ts: float = 0.0
    paid_renewals: int = 0
    points: int = 0
    points_set: _Attr = msgspec.field(default_factory=_Attr)
    #: (expires_at, points) lots of the latest points snapshot, ascending.
    points_expiring: list[tuple[float, int]] = []
    #: Latest member-initiated activity (:data:`VISIT_KINDS`), and the latest distinct UTC day numbers
    #: with any, ascending (at most :data:`VISIT_DAYS_KEPT`): the lifecycle stage is read off them.
    last_visit_ts: float = 0.0
    visit_days: list[int] = []
    #: Order spend per 7-day bucket (week number -> amount), the latest :data:`GROWTH_BUCKETS_KEPT`.
    growth_weeks: dict[int, float] = {}
    personalization_consent: bool = True
    consent_set: _Attr = msgspec.field(default_factory=_Attr)
    #: The latest opt-out and the opt-ins after it (:mod:`features.consent`): what may be kept.
    consent_log: list[ConsentChange] = []
    birth_month: int = 0
    region: str = ""
    joined_ts: float = 0.0
    profile_set: _Attr = msgspec.field(default_factory=_Attr)
    first_seen_ts: float = 0.0
    last_event_ts: float = 0.0
    events_total: int = 0
    #: Every event applied, with or without consent (replay and progress probes; no feature reads it).
    events_folded: int = 0
    offers: dict[str, OfferInteraction] = {}
    #: (event_ts, event id hash) of the latest applied events, ascending, at most APPLIED_IDS_KEPT.
    applied: list[tuple[float, int]] = []
    #: Attributes the business declares (``profile_updated.attributes``), read by the specification.
    attributes: dict[str, Attribute] = {}


def new_state(member_id: str) -> MemberState:
    return MemberState(member_id=member_id)


def _newer(attr: _Attr, event: ev._Event) -> bool:
    """Last-writer-wins by (event_ts, event_id): a deterministic winner whatever the arrival order."""
    if (event.event_ts, event.event_id) >= (attr.ts, attr.event_id):
        attr.ts = event.event_ts
        attr.event_id = event.event_id
        return True
    return False


def _bump(table: dict[str, Decayed], key: str, ts: float, weight: float = 1.0) -> None:
    counter = table.get(key)
    if counter is None:
        if len(table) >= MAX_CATEGORIES_TRACKED:
            # Evict the category updated longest ago; ties broken by name so eviction is deterministic.
            oldest = min(table.items(), key=lambda kv: (kv[1].ref_ts, kv[0]))[0]
            del table[oldest]
        counter = table[key] = Decayed()
    counter.add(ts, weight)


def _latest(table: dict[str, float], key: str, ts: float) -> None:
    if ts > table.get(key, 0.0):
        table[key] = ts


def _browsed(state: MemberState, cat: str, ts: float, weight: float) -> None:
    _bump(state.cat_interest, cat, ts, weight)
    _latest(state.cat_last_ts, cat, ts)
    if len(state.cat_last_ts) > MAX_CATEGORIES_TRACKED:
        # Same bound as the interest counters: forget the times of categories they evicted.
        for c in [c for c in state.cat_last_ts if c not in state.cat_interest]:
            del state.cat_last_ts[c]


def _set_attributes(state: MemberState, event: ev.ProfileUpdated) -> None:
    for name, value in (event.attributes or {}).items():
        attr = state.attributes.get(name)
        if attr is None:
            if len(state.attributes) >= MAX_ATTRIBUTES:
                continue  # bounded blob; the decoder already caps one event's attributes
            attr = state.attributes[name] = Attribute()
        if (event.event_ts, event.event_id) >= (attr.ts, attr.event_id):
            attr.value, attr.ts, attr.event_id = value, event.event_ts, event.event_id


def _interaction(state: MemberState, offer_id: str) -> OfferInteraction:
    inter = state.offers.get(offer_id)
    if inter is None:
        if len(state.offers) >= MAX_OFFERS_TRACKED:
            # Evict the offer touched longest ago; ties broken by id so eviction is deterministic.
            oldest = min(state.offers.items(), key=lambda kv: (kv[1].touched_ts(), kv[0]))[0]
            del state.offers[oldest]
        inter = state.offers[offer_id] = OfferInteraction()
    return inter


def _visit(state: MemberState, ts: float) -> None:
    if ts > state.last_visit_ts:
        state.last_visit_ts = ts
    day = int(ts // 86400.0)
    days = state.visit_days
    i = bisect.bisect_left(days, day)
    if i < len(days) and days[i] == day:
        return
    days.insert(i, day)
    if len(days) > VISIT_DAYS_KEPT:
        del days[0]  # the oldest day goes, whatever arrived last: a function of the set of days


def _grow(state: MemberState, ts: float, amount: float) -> None:
    week = int(ts // GROWTH_BUCKET_SECONDS)
    weeks = state.growth_weeks
    weeks[week] = weeks.get(week, 0.0) + amount
    if len(weeks) > GROWTH_BUCKETS_KEPT:
        del weeks[min(weeks)]  # a week older than the kept ones is dropped again: order independent


_HASH_OF = operator.itemgetter(1)  # (event_ts, hash) -> hash


def event_hash(event_id: str) -> int:
    """A stable signed 64-bit hash of an event id (the id itself would cost 3x the bytes per entry)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True)


def already_applied(state: MemberState, event: ev.Event) -> bool:
    """True when this event id is in the member's window of applied events (a producer retry)."""
    return event_hash(event.event_id) in map(_HASH_OF, state.applied)


def _remember(state: MemberState, event: ev.Event) -> bool:
    """Add the event to the window; False (and nothing changes) when its id is there already."""
    h = event_hash(event.event_id)
    applied = state.applied
    if h in map(_HASH_OF, applied):  # a C-level scan of the (at most 64) hashes: this runs per event
        return False
    entry = (event.event_ts, h)
    if len(applied) >= APPLIED_IDS_KEPT:
        if entry < applied[0]:
            return True  # older than the whole window: applied, but not remembered
        del applied[0]
    bisect.insort(applied, entry)
    return True


def collect_from(state: MemberState) -> float:
    """The event time from which the member's behaviour may be kept (:func:`features.consent.collect_from`;
    a state written before the consent log existed counts its consent flag as one change)."""
    if state.consent_log:
        return consent.collect_from(state.consent_log)
    return 0.0 if state.personalization_consent else consent.NEVER


#: Kinds whose behaviour part goes past counts and visits, and kinds with an obligation part: the fold
#: skips the pattern matching of a part an event does not have (it runs 20k+ times a second).
_BEHAVIOUR_DETAIL = frozenset({"page_view", "search", "add_to_cart", "order", "impression", "click"})
_NO_OBLIGATION = frozenset({"page_view", "search", "add_to_cart", "click"})


def forget_behaviour(state: MemberState) -> None:
    """Clear every behaviour field (see the module docstring); obligation fields stay."""
    state.counts = {}
    state.last_ts = {}
    state.cat_interest = {}
    state.cat_last_ts = {}
    state.cat_orders = {}
    state.spend = Decayed()
    state.items = Decayed()
    state.orders_total = 0
    state.spend_total = 0.0
    state.orders_with_coupon = 0
    state.discount_total = 0.0
    state.last_visit_ts = 0.0
    state.visit_days = []
    state.events_total = 0
    state.last_event_ts = 0.0
    for offer_id, inter in list(state.offers.items()):
        inter.shown = 0
        inter.clicks = 0
        inter.last_click_ts = 0.0
        if inter == _NOTHING:
            del state.offers[offer_id]  # only clicks were known: nothing of it is an obligation


_NOTHING = OfferInteraction()


def _consent_changed(state: MemberState, event: ev.ConsentChanged) -> None:
    before = collect_from(state)
    if not state.consent_log and state.consent_set.ts:
        # A state folded before the log existed: its last change is the log's first entry.
        c = state.consent_set
        consent.record(state.consent_log, ConsentChange(c.ts, c.event_id, state.personalization_consent))
    if _newer(state.consent_set, event):
        state.personalization_consent = event.personalization
    consent.record(state.consent_log, ConsentChange(event.event_ts, event.event_id, event.personalization))
    if collect_from(state) > before:
        # A (possibly late) opt-out: what was collected before the new start goes, and a late one
        # takes what was folded after it with it (see features.consent for what this can lose).
        forget_behaviour(state)


def _behaviour(state: MemberState, event: ev.Event, kind: str, ts: float) -> None:
    """The part of an event kept only with consent (see the module docstring)."""
    state.events_total += 1
    if ts > state.last_event_ts:
        state.last_event_ts = ts
    if kind in COUNTED_KINDS:
        _bump(state.counts, kind, ts)
        if ts > state.last_ts.get(kind, 0.0):
            state.last_ts[kind] = ts
    if kind in VISIT_KINDS:
        _visit(state, ts)
    if kind not in _BEHAVIOUR_DETAIL:
        return
    match event:
        case ev.PageView(category=cat) | ev.Search(category=cat):
            if cat is not None:
                _browsed(state, cat, ts, 1.0)
        case ev.AddToCart(category=cat):
            _browsed(state, cat, ts, 3.0)
        case ev.Order():
            state.spend.add(ts, event.amount)
            state.items.add(ts, float(event.items))
            state.orders_total += 1
            state.spend_total += event.amount
            if event.coupon_id is not None:
                state.orders_with_coupon += 1
                state.discount_total += event.discount
            for c in sorted(set(event.categories)):
                _bump(state.cat_orders, c, ts)
        case ev.Impression():
            _interaction(state, event.offer_id).shown += 1
        case ev.Click():
            inter = _interaction(state, event.offer_id)
            inter.clicks += 1
            inter.last_click_ts = max(inter.last_click_ts, ts)
        case _:
            pass


def _obligations(state: MemberState, event: ev.Event, kind: str, ts: float) -> None:
    """The part of an event folded whatever the consent: rules, caps and the membership contract."""
    if kind in _NO_OBLIGATION:
        return
    match event:
        case ev.Order():
            _grow(state, ts, event.amount)
        case ev.CouponClaim():
            state.coupon_claims_total += 1
            inter = _interaction(state, event.offer_id)
            inter.claims += 1
            inter.last_claim_ts = max(inter.last_claim_ts, ts)
        case ev.CouponRedeem():
            state.coupon_redeems_total += 1
            _interaction(state, event.offer_id).redeems += 1
        case ev.BenefitUse() | ev.ConsultBooked():
            inter = _interaction(state, event.offer_id)
            inter.claims += 1
            inter.last_claim_ts = max(inter.last_claim_ts, ts)
        case ev.Impression():
            inter = _interaction(state, event.offer_id)
            inter.last_shown_ts = max(inter.last_shown_ts, ts)
            recent = inter.recent_shown_ts
            recent.append(ts)
            recent.sort()
            if len(recent) > IMPRESSION_TIMES_KEPT:
                del recent[0]
        case ev.Dismiss():
            inter = _interaction(state, event.offer_id)
            inter.dismisses += 1
            inter.last_dismiss_ts = max(inter.last_dismiss_ts, ts)
        case ev.TierChanged():
            if _newer(state.tier_set, event):
                state.tier = event.tier
        case ev.PaidMembershipStarted() | ev.PaidMembershipRenewed():
            if isinstance(event, ev.PaidMembershipStarted):
                state.paid_since_ts = max(state.paid_since_ts, ts)
            else:
                state.paid_renewals += 1
            if _newer(state.paid_set, event):
                state.paid_member = True
                state.paid_expires_ts = event.expires_at or 0.0
                state.paid_ended_ts = 0.0
            if event.plan is not None and _newer(state.plan_set, event):
                state.paid_plan = event.plan
        case ev.PaidMembershipEnded():
            if _newer(state.paid_set, event):
                state.paid_member = False
                state.paid_ended_ts = ts
                state.paid_expires_ts = 0.0  # every paid_* field follows the latest event alone
        case ev.PointsChanged():
            if _newer(state.points_set, event):
                state.points = event.points
                lots = sorted((lot.expires_at, lot.points) for lot in event.expiring)
                state.points_expiring = lots[-POINTS_LOTS_KEPT:]
        case ev.ProfileUpdated():
            if _newer(state.profile_set, event):
                if event.birth_month is not None:
                    state.birth_month = event.birth_month
                if event.region is not None:
                    state.region = event.region
                if event.joined_ts is not None:
                    state.joined_ts = event.joined_ts
            # Per attribute, not per event: a partial update never erases what it does not mention.
            _set_attributes(state, event)
        case _:
            pass


def apply(state: MemberState, event: ev.Event) -> MemberState:
    """Fold one event into the member's state (in place) and return it; an event id already applied
    to this member (within the window) changes nothing. Its behaviour part is folded only with consent
    (see the module docstring)."""
    if not _remember(state, event):
        return state
    ts = event.event_ts
    state.events_folded += 1
    if not state.member_id:
        state.member_id = event.member_id
    if state.first_seen_ts == 0.0 or ts < state.first_seen_ts:
        state.first_seen_ts = ts
    kind = ev.event_type(event)
    if kind == "consent_changed":
        _consent_changed(state, event)  # type: ignore[arg-type]
    log = state.consent_log
    start = consent.collect_from(log) if log else 0.0 if state.personalization_consent else consent.NEVER
    if ts >= start:
        _behaviour(state, event, kind, ts)
    _obligations(state, event, kind, ts)
    return state


def fold(events: list[ev.Event], state: MemberState | None = None) -> MemberState:
    """Fold a sequence of one member's events (any order) into a state."""
    if state is None:
        state = new_state(events[0].member_id if events else "")
    for event in events:
        apply(state, event)
    return state


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(MemberState)


def encode_state(state: MemberState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(raw: bytes) -> MemberState:
    return _state_decoder.decode(raw)


def copy_state(state: MemberState) -> MemberState:
    return decode_state(encode_state(state))
