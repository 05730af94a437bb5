// Package decision owns nudge's rules: it loads and validates the rules
// file, compiles its CEL expressions once, evaluates triggers on applied
// events (Rules.Step) and picks offers for decisions (Rules.Decide).
//
// It is pure: no Redis, no gRPC, no clock reads (the caller passes now).
// A compiled *Rules is immutable and safe for concurrent use; a step
// function returned by Step may run concurrently on distinct profiles.
// Live holds the rules in force and swaps them on reload.
//
// # Rules file
//
// A rules file is YAML (see examples/rules.yaml for a commented one):
//
//	version: 1                    # required, must be 1
//	triggers:
//	  - id: category-interest-coupon   # ^[a-z0-9][a-z0-9_.-]{0,63}$, unique among triggers
//	    description: free text          # optional
//	    on: [view]                      # event types looked at; empty: every type
//	    when: <CEL bool>                # optional if on is set; empty: always
//	    cooldown: 24h                   # optional Go duration, >= 0
//	    cooldown_by: <CEL string>       # optional, needs cooldown
//	    action:
//	      channel: sms                  # required, ^[a-z][a-z0-9_-]*$
//	      template: category_coupon     # required
//	      payload: {discount: "10%"}    # literal strings
//	      payload_expr: {category: event.category}  # CEL, result made a string
//	offers:
//	  - id: phones-coupon               # unique among offers
//	    description: free text
//	    priority: 100                   # integer, default 0; higher is tried first, ties in file order
//	    channels: [sms, push]           # empty: any channel
//	    when: <CEL bool>                # optional; empty: always eligible
//	    template: phones_coupon         # required
//	    payload: {...}
//	    payload_expr: {...}
//
// Unknown keys, repeated keys, missing or malformed fields, duplicate ids,
// negative cooldowns and expressions that do not compile or have the wrong
// result type are errors. Parse reports all of them at once, each as a
// *RuleError naming the file, line, rule and field, joined with errors.Join;
// every one matches ErrInvalidRules. A key may not be in both payload and
// payload_expr. Expression results for payload_expr and cooldown_by must be
// a string, a number, a bool, a timestamp (RFC 3339) or a duration.
//
// # Triggers
//
// For every event that is applied to a profile (never a duplicate or a
// rejected one), the triggers whose on lists the event type run in file
// order, on the profile that already includes the event, with now set to
// the event's occurred_at. A late event is therefore judged on what had
// happened up to it: events after it are outside its windows, so it does not
// complete a pattern that only exists with later events counted. A trigger
// fires when all of these hold:
//
//   - when is true;
//   - the user has consented to the action's channel (profile.consented);
//   - the cooldown key (the trigger id, or id + "/" + cooldown_by's value)
//     did not fire within cooldown of this event's time, before or after
//     it (events can arrive out of order); cooldown marks are kept for
//     profile.Limits.FiredRetention (30 days by default), which caps
//     longer cooldowns;
//   - every payload_expr evaluates.
//
// The action's ID is profile.ActionID(user, event, trigger), its time is the
// event's occurred_at and its payload is payload plus the evaluated
// payload_expr. An expression that fails to evaluate (a missing map key, a
// bad conversion, the cost limit) never panics and never fails the batch:
// the trigger does not fire for that event and the error goes to the
// OnEvalError hook.
//
// # Offers
//
// Decide first checks consent for the request's channel (reason rule id
// "consent"), then tries offers by priority, skipping those not for the
// channel. The first whose when is true and whose payload evaluates is sent
// (VerdictSend). An offer whose expression fails is skipped and named in the
// reasons. With no eligible offer the verdict is VerdictNone.
//
// # CEL environment
//
// Expressions use the CEL standard library, the strings extension
// (cel.dev/cel-go/ext Strings: lowerAscii, format, split, ...), and
// comparisons between int, uint and double. Time functions (getHours, ...)
// default to UTC. Literal arguments of duration(), timestamp() and
// matches() are checked at load. One evaluation may cost at most MaxCost.
//
// Trigger variables:
//
//	event    map(string, dyn), the event being applied:
//	           id, user_id, type, category, item_id  string ("" when absent)
//	           value                                 double
//	           channel                               string
//	           attributes                            map(string, string)
//	           occurred_at                           timestamp
//	         Other keys are rejected at load. Every key is present, so
//	         has(event.category) is always true: test event.category != "".
//	         A missing attributes key is an evaluation error: test it with
//	         "key" in event.attributes first.
//	profile  the user's profile, updated with the event
//	now      timestamp, the event's occurred_at (event time)
//
// Offer variables:
//
//	profile    the user's profile (empty for an unknown user)
//	now        timestamp, the decision's processing time
//	channel    string, the request's channel
//	placement  string, the request's placement ("" if none)
//	context    map(string, string), the request's context (empty if none)
//
// # Profile functions
//
// Windows end at now (event time for triggers, processing time for offers)
// and are counted in whole minutes of event time: a window covers every
// minute from the one containing now-window to the one containing now. They
// can only see what the profile retains (profile.Limits.Retention, 24h by
// default); a negative window is an evaluation error.
//
//	profile.count(type string, window duration) int
//	    Events of the type in the window, all categories.
//	profile.count(type string, category string, window duration) int
//	    Events of the type and category in the window. An empty category
//	    gives 0 (it is almost always a missing event.category).
//	profile.total(type string) int
//	    All-time count of events of the type (not bound by retention).
//	profile.seen_within(type string, window duration) bool
//	    Whether the latest event of the type occurred at or after
//	    now - window (an event later than now also counts).
//	profile.last_seen(type string) timestamp
//	    Time of the latest event of the type; 1970-01-01T00:00:00Z if none,
//	    so profile.last_seen("purchase") < profile.last_seen("add_to_cart")
//	    reads "nothing bought since the last add to cart".
//	profile.purchase_count() int
//	    All-time number of purchase events.
//	profile.purchase_value() double
//	    All-time sum of purchase values.
//	profile.consented(channel string) bool
//	    Whether the user may be contacted on the channel: the latest
//	    subscribe/unsubscribe for it or for all channels decides; true if
//	    there was none.
//	profile.attr(name string) string
//	    A remembered event attribute (currently "tz"), or "".
package decision
