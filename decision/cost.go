package decision

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/overloads"
)

// This file bounds what one event or one decision may cost (Limits.
// MaxEventCost, MaxDecisionCost), from CEL's static cost estimate of every
// expression, so that no rules file makes ingest or decisions slow: the
// estimate is known when the file is loaded, and a file over a limit is
// refused before it is ever in force.

// Sizes of what expressions read, as the API validates them
// (proto/nudge/v1: event.proto, decision.proto). CEL's estimator needs
// them: without a bound on a string or a map, an expression that scans one
// (matches, contains, exists) has no bound either.
const (
	maxIDLen       = 128 // event id, user id, category, item id, placement
	maxTypeLen     = 64
	maxChannelLen  = 32
	maxPairs       = 32 // event attributes, request context
	maxPairKeyLen  = 64
	maxPairValLen  = 256 // also a profile attribute, remembered from an event
	maxEventKeyLen = len("occurred_at")
)

// profileCallCost is the estimate of the profile functions that scan a
// user's history (count, sum, monetary, distinct, sessions and
// active_days scan the user's series and their buckets in the window,
// sends the user's sends), in CEL's unit (50 to 100 ns). The others are
// a lookup, costing 1 like any CEL call. The estimate cannot
// see how much a profile holds: that is bounded by the profile settings
// (max_series, max_sends).
const profileCallCost = 10

func sizeRange(max int) *cost.SizeEstimate {
	return &cost.SizeEstimate{Min: 0, Max: uint64(max)}
}

func mapSize(pairs, keyLen, valLen int) *cost.SizeEstimate {
	return &cost.SizeEstimate{Min: 0, Max: uint64(pairs), Key: sizeRange(keyLen), Elem: sizeRange(valLen)}
}

// sizeEstimator is the cost.Estimator of rule expressions: the sizes of
// the variables and the cost of the profile functions.
type sizeEstimator struct{}

func (sizeEstimator) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	p := n.Path()
	if len(p) == 0 {
		return nil
	}
	switch p[0] {
	case "event":
		return eventSize(p[1:])
	case "context":
		switch {
		case len(p) == 1:
			return mapSize(maxPairs, maxPairKeyLen, maxPairValLen)
		case p[1] == "@keys":
			return sizeRange(maxPairKeyLen)
		case len(p) == 2:
			return sizeRange(maxPairValLen)
		}
	case "channel":
		return sizeRange(maxChannelLen)
	case "placement":
		return sizeRange(maxIDLen)
	}
	return nil
}

// eventSize sizes event and what it holds, path being what follows
// "event": a field, @keys, @values (an index such as event[k]).
func eventSize(path []string) *cost.SizeEstimate {
	if len(path) == 0 {
		// Elem covers every field: the longest string, and the attributes.
		return &cost.SizeEstimate{Min: uint64(len(eventFields)), Max: uint64(len(eventFields)),
			Key: sizeRange(maxEventKeyLen), Elem: mapSize(maxPairValLen, maxPairKeyLen, maxPairValLen)}
	}
	switch f := path[0]; {
	case f == "@keys":
		return sizeRange(maxEventKeyLen)
	case f == "attributes" || f == "@values":
		switch {
		case len(path) == 1 && f == "attributes":
			return mapSize(maxPairs, maxPairKeyLen, maxPairValLen)
		case len(path) == 1:
			return mapSize(maxPairValLen, maxPairKeyLen, maxPairValLen)
		case path[1] == "@keys":
			return sizeRange(maxPairKeyLen)
		case len(path) == 2:
			return sizeRange(maxPairValLen)
		}
		return nil
	case len(path) > 1:
		return nil
	case f == "type":
		return sizeRange(maxTypeLen)
	case f == "channel":
		return sizeRange(maxChannelLen)
	case f == "value" || f == "occurred_at":
		return &cost.SizeEstimate{Min: 1, Max: 1}
	}
	return sizeRange(maxIDLen)
}

// maxScalarText is the longest text of a number, bool, timestamp or
// duration converted to a string ("2006-01-02T15:04:05.999999999Z" is 30).
const maxScalarText = 40

func (sizeEstimator) EstimateCallCost(_, overloadID string, _ *cost.AstNode, _ []cost.AstNode) *cost.CallEstimate {
	switch overloadID {
	case "profile_count_type_window", "profile_count_type_category_window", "profile_sends_channel_window",
		"profile_sum_type_window", "profile_sum_type_category_window", "profile_monetary_window",
		"profile_distinct_type_field_window", "profile_sessions_window_gap", "profile_active_days_window":
		return &cost.CallEstimate{CostEstimate: cost.FixedCostEstimate(profileCallCost)}
	case "profile_attr_name":
		return &cost.CallEstimate{CostEstimate: cost.FixedCostEstimate(1), ResultSize: sizeRange(maxPairValLen)}
	case overloads.BoolToString, overloads.IntToString, overloads.UintToString, overloads.DoubleToString,
		overloads.TimestampToString, overloads.DurationToString:
		return &cost.CallEstimate{CostEstimate: cost.FixedCostEstimate(1), ResultSize: sizeRange(maxScalarText)}
	}
	return nil
}

// ruleCost is what a rule costs besides its expressions and payload: the
// setup of its evaluation, its consent and cooldown checks and, for a
// trigger that fires, its action. Measured against CEL's unit: an event
// reaching 1,000 triggers whose when is true takes about 1.1 ms, about
// what 10,000 units of CEL take.
const ruleCost = 10

// exprCost is what one expression adds to its rule's cost: 1, plus CEL's
// estimate of its worst case, but never more than MaxCost, where its
// evaluation stops. An estimate past MaxCost, or one CEL cannot bound (a
// string of unknown length, as format() or dyn() can make, scanned by
// contains or matches), counts as MaxCost.
func exprCost(est cost.Estimate) uint64 {
	return 1 + min(est.Max, MaxCost)
}

// addCost adds costs, saturating: an unbounded estimate stays unbounded.
func addCost(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// formatCost writes a cost for a message.
func formatCost(c uint64) string {
	if c == math.MaxUint64 {
		return "unbounded"
	}
	return strconv.FormatUint(c, 10)
}

// costed is a rule as the cost checks see it.
type costed struct {
	kind, id string
	line     int
	cost     uint64
}

// checkEventCost refuses rules whose triggers make an event of some type
// cost more than the limit. Triggers without on reach every type; a type
// no trigger names reaches only those. It takes time linear in the
// triggers and the types they name: a type's total is its own triggers'
// plus those of every type, and only a type over the limit is walked, to
// say where.
func checkEventCost(c *collector, r *Rules, limit int) {
	var every uint64
	for _, t := range r.anyType {
		every = addCost(every, t.cost)
	}
	if every > uint64(limit) {
		// Then every type is over the limit: one report says so.
		checkSum(c, "an event of any type", "triggers", costedTriggers(r.anyType), limit, "max_event_cost")
		return
	}
	for _, typ := range slices.Sorted(maps.Keys(r.byType)) {
		total := every
		for _, t := range r.byType[typ] {
			total = addCost(total, t.cost)
		}
		if total <= uint64(limit) {
			continue
		}
		if c.full() {
			c.dropped++
			continue
		}
		checkSum(c, "an event of type "+strconv.Quote(typ), "triggers", costedTriggers(r.triggersFor(typ).all()), limit, "max_event_cost")
	}
}

func costedTriggers(ts []*trigger) []costed {
	out := make([]costed, len(ts))
	for i, t := range ts {
		out[i] = costed{kind: kindTrigger, id: t.id, line: t.line, cost: t.cost}
	}
	return out
}

// checkDecisionCost refuses offers that make a decision on some channel
// cost more than the limit, in time linear in the offers and the channels
// they list, as checkEventCost.
func checkDecisionCost(c *collector, r *Rules, limit int) {
	var every uint64
	var anyChannel []*offer
	listing := map[string][]*offer{} // by priority, as r.offers
	for _, o := range r.offers {
		if len(o.channels.list) == 0 {
			anyChannel = append(anyChannel, o)
			every = addCost(every, o.cost)
		}
		for _, ch := range o.channels.list {
			listing[ch] = append(listing[ch], o)
		}
	}
	if every > uint64(limit) {
		checkSum(c, "a decision on any channel", "offers", costedOffers(anyChannel), limit, "max_decision_cost")
		return
	}
	for _, ch := range slices.Sorted(maps.Keys(listing)) {
		total := every
		for _, o := range listing[ch] {
			total = addCost(total, o.cost)
		}
		if total <= uint64(limit) {
			continue
		}
		if c.full() {
			c.dropped++
			continue
		}
		var reached []*offer
		for _, o := range r.offers {
			if o.forChannel(ch) {
				reached = append(reached, o)
			}
		}
		checkSum(c, "a decision on channel "+strconv.Quote(ch), "offers", costedOffers(reached), limit, "max_decision_cost")
	}
}

func costedOffers(offers []*offer) []costed {
	out := make([]costed, len(offers))
	for i, o := range offers {
		out[i] = costed{kind: kindOffer, id: o.id, line: o.line, cost: o.cost}
	}
	return out
}

// checkSum reports, at the rule that takes the running sum over the limit,
// that what reaches rules costing more than limit, naming the costliest
// ones so the author knows where to cut.
func checkSum(c *collector, what, rules string, list []costed, limit int, key string) bool {
	var sum uint64
	over := -1
	for i, x := range list {
		sum = addCost(sum, x.cost)
		if over < 0 && sum > uint64(limit) {
			over = i
		}
	}
	if over < 0 {
		return true
	}
	top := slices.Clone(list)
	slices.SortStableFunc(top, func(a, b costed) int { return cmp.Compare(b.cost, a.cost) })
	var names []string
	for _, x := range top[:min(3, len(top))] {
		names = append(names, fmt.Sprintf("%s %q (line %d) %s", x.kind, x.id, x.line, formatCost(x.cost)))
	}
	x := list[over]
	c.add(x.line, x.kind, x.id, "", "%s reaches %s costing %s in all, over the limit of %d (%s) from this one on; the costliest of its %d: %s",
		what, rules, formatCost(sum), limit, key, len(list), strings.Join(names, ", "))
	return false
}
