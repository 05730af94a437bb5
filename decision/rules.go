package decision

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
)

var (
	ruleIDPattern    = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	channelPattern   = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
	eventTypePattern = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)
)

// Rules are compiled rules. They are immutable and safe for concurrent use.
// A nil *Rules has no triggers and no offers.
type Rules struct {
	version  string
	text     []byte     // the file, as parsed (Text)
	triggers []*trigger // file order
	offers   []*offer   // by priority, highest first; ties in file order
	// Policies, in file order.
	defaultTZ        *time.Location // never nil once parsed
	caps             []*frequencyCap
	quiet            []*quietHours
	purchaseCooldown *purchaseCooldown // nil: none
	fallbacks        map[string]*fallback
	// byType lists the triggers that name an event type in their on, in
	// file order; anyType those without on, which every type reaches. An
	// event's triggers are both lists merged by file position: the
	// triggers without on are not copied into every type's list, which
	// would take (types named) x (triggers without on) pointers.
	byType  map[string][]*trigger
	anyType []*trigger
	// byID finds a trigger by id, for its timers.
	byID map[string]*trigger
	// channelLimit is the most actions one event's triggers send on one
	// channel (settings.max_actions_per_channel; 0: no limit).
	channelLimit int
	// triggerHorizon is how old (by processing time) an applied event
	// may be and still be judged by the triggers
	// (settings.trigger_horizon).
	triggerHorizon time.Duration
	// conversion says what counts as a conversion (measure.go);
	// noMeasure (settings.measure: false) records no exposure or
	// conversion.
	conversion conversion
	noMeasure  bool
	// campaigns are the triggers, their steps and the offers, in file
	// order (triggers first); offerByID finds an offer.
	campaigns []Campaign
	offerByID map[string]*offer
	// features are the features section, in file order; featureIndex
	// finds one by name. scored: some offer has a score.
	features     []*feature
	featureIndex map[string]int
	scored       bool
}

// triggerList is the triggers one event type reaches, as two lists in
// file order.
type triggerList struct {
	named, any []*trigger
}

// next returns the next trigger of l in file order, advancing i (in
// named) or j (in any), or nil after the last.
func (l *triggerList) next(i, j *int) *trigger {
	switch {
	case *i < len(l.named) && (*j >= len(l.any) || l.named[*i].pos < l.any[*j].pos):
		*i++
		return l.named[*i-1]
	case *j < len(l.any):
		*j++
		return l.any[*j-1]
	}
	return nil
}

// all returns the triggers of l in file order.
func (l triggerList) all() []*trigger {
	out := make([]*trigger, 0, len(l.named)+len(l.any))
	var i, j int
	for t := l.next(&i, &j); t != nil; t = l.next(&i, &j) {
		out = append(out, t)
	}
	return out
}

type trigger struct {
	id         string
	pos        int    // in file order, for triggerList
	line       int    // for cost reports
	cost       uint64 // see Limits.MaxEventCost
	when       *expr  // nil: always
	cooldown   time.Duration
	cooldownBy *expr // nil: the key is the trigger id
	channel    string
	template   string
	payload    map[string]string
	exprs      []payloadExpr

	on []string // nil: every type
	// wait delays the trigger's action (or a step's, from the previous
	// step's due time); unless lists the event types that cancel it.
	wait   time.Duration
	unless []string
	// steps is the journey: steps[0] is the trigger itself, the rest its
	// then. Set for every trigger (a step of a then has none).
	steps []*trigger
	// transactional actions are exempt from frequency caps, quiet hours
	// and the channel limit (receipts); consent still applies.
	transactional bool
	priority      int           // for the channel limit; higher goes first
	lookback      time.Duration // see lookback
	// byCategory: when reads event.category, so a late event is judged
	// again only at the minutes with events of its own category (an
	// event of another category is judged on its own category).
	byCategory bool
	// ab: a share control of the users (by a stable hash of the user and
	// the journey's trigger id) is held out of the journey: its steps
	// record control exposures instead of sending. Set on a journey's
	// trigger; its steps follow it.
	ab      bool
	control float64
}

// hasThen reports whether the trigger's journey has steps after it.
func (t *trigger) hasThen() bool { return len(t.steps) > 1 }

type offer struct {
	id           string
	line         int    // for cost reports
	cost         uint64 // see Limits.MaxDecisionCost
	priority     int
	channels     channelSet // empty: any
	category     string     // "": none (no purchase cooldown)
	cooldown     time.Duration
	cooldownText string
	ab           bool
	control      float64 // share of users in the control group, [0, 1)
	thompson     bool    // select: thompson
	when         *expr   // nil: always eligible
	score        *expr   // nil: none (ranked after the offers with one)
	template     string
	payload      map[string]string
	exprs        []payloadExpr
}

func (o *offer) forChannel(ch string) bool {
	return len(o.channels.list) == 0 || o.channels.has(ch)
}

// channelSet is a list of distinct channels, in file order, that answers
// "is ch listed" in constant time however long the list: every decision
// asks it of every offer and quiet hours.
type channelSet struct {
	list []string
	set  map[string]struct{} // nil while the list is short: a scan is faster
}

const channelScanMax = 8

func (s *channelSet) add(ch string) {
	if s.has(ch) {
		return
	}
	s.list = append(s.list, ch)
	switch {
	case s.set != nil:
		s.set[ch] = struct{}{}
	case len(s.list) > channelScanMax:
		s.set = make(map[string]struct{}, len(s.list))
		for _, c := range s.list {
			s.set[c] = struct{}{}
		}
	}
}

func (s *channelSet) has(ch string) bool {
	if s.set != nil {
		_, ok := s.set[ch]
		return ok
	}
	return slices.Contains(s.list, ch)
}

type payloadExpr struct {
	key   string
	field string // as in RuleError.Field, for errors
	expr  *expr
}

// expr is one compiled CEL expression.
type expr struct {
	prg cel.Program
	src string // for the trace
	// reads are the features the expression reads (features.<name>),
	// for the cost of offers.
	reads []string
}

// Load reads and compiles the rules file at path, reading at most one byte
// more than the size limit (Limits.MaxBytes), whatever the file is.
func Load(path string, opts ...LoadOption) (*Rules, error) {
	cfg := newLoadConfig(opts)
	data, size, err := readBounded(path, cfg.limits.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("decision: read rules: %w", err)
	}
	return parse(path, data, size, cfg.limits, nil)
}

// Parse compiles a rules file. name is used in error messages (usually the
// file path). Every problem found is reported, each as a *RuleError,
// joined with errors.Join; all of them match ErrInvalidRules. The file is
// held to DefaultLimits unless WithLimits says otherwise.
func Parse(name string, data []byte, opts ...LoadOption) (*Rules, error) {
	return parse(name, data, int64(len(data)), newLoadConfig(opts).limits, nil)
}

// parse is Parse of a file whose size is known to be size (-1: at least
// len(data)). pace, when not nil, runs after each rule is compiled (see
// Live's reloads).
func parse(name string, data []byte, size int64, l Limits, pace func()) (*Rules, error) {
	if pace == nil {
		pace = func() {}
	}
	env, err := envs()
	if err != nil {
		return nil, err
	}
	c := &collector{file: name}
	if !checkSize(c, data, size, l) {
		return nil, c.err()
	}
	raw := readFile(c, data, l)
	if !checkExpressions(c, &raw, l) {
		return nil, c.err()
	}
	cc := &compiler{c: c, limits: l, memo: make(map[exprKey]compiled)}
	r := &Rules{}
	seen := make(map[string]int) // id -> line of first definition
	for i := range raw.triggers {
		if t := cc.compileTrigger(env.trigger, &raw.triggers[i], seen); t != nil {
			t.pos = len(r.triggers)
			r.triggers = append(r.triggers, t.trigger)
			r.index(t.trigger, t.on)
			if r.byID == nil {
				r.byID = make(map[string]*trigger)
			}
			r.byID[t.id] = t.trigger
		}
		pace()
	}
	features, names := cc.compileFeatures(env.feature, raw.features)
	r.features = features
	var featureCost map[string]uint64 // for the offers that read them
	if len(features) > 0 {
		r.featureIndex = make(map[string]int, len(features))
		featureCost = make(map[string]uint64, len(features))
		for i, f := range features {
			r.featureIndex[f.name] = i
			featureCost[f.name] = f.cost
		}
	}
	offerEnv, err := env.offerEnv(names)
	if err != nil {
		return nil, fmt.Errorf("decision: offer environment with the features: %w", err)
	}
	clear(seen)
	for i := range raw.offers {
		if o := cc.compileOffer(offerEnv, &raw.offers[i], seen, featureCost); o != nil {
			r.offers = append(r.offers, o)
			r.scored = r.scored || o.score != nil
		}
		pace()
	}
	compileSettings(c, &raw, r)
	compileCampaigns(c, cc, env.trigger, &raw, r)
	compilePolicies(c, &raw, r, seen)
	compileFallbacks(c, &raw, r)
	slices.SortStableFunc(r.offers, func(a, b *offer) int { return cmp.Compare(b.priority, a.priority) })
	checkEventCost(c, r, l.MaxEventCost)
	checkDecisionCost(c, r, l.MaxDecisionCost)
	if err := c.err(); err != nil {
		return nil, err
	}
	r.version = contentVersion(data)
	r.text = bytes.Clone(data)
	return r, nil
}

// checkExpressions refuses a file with more expressions, or more
// expression source, than the limits, before any is compiled: at the
// first rule past a limit. (The rule, not the expression: an expression
// repeated by an alias reads as being on the line of its anchor.)
func checkExpressions(c *collector, raw *rawFile, l Limits) bool {
	type rule struct {
		kind, id     string
		line, n, len int
	}
	var rules []rule
	count := func(r *rule, vals ...string) {
		for _, v := range vals {
			if v != "" {
				r.n++
				r.len += len(v)
			}
		}
	}
	for i := range raw.triggers {
		t := &raw.triggers[i]
		r := rule{kind: kindTrigger, id: t.id.val, line: t.line}
		count(&r, t.when.val, t.cooldownBy.val)
		for _, e := range t.payloadExpr {
			count(&r, e.val)
		}
		for _, st := range t.then {
			count(&r, st.when.val)
			for _, e := range st.payloadExpr {
				count(&r, e.val)
			}
		}
		rules = append(rules, r)
	}
	for i := range raw.offers {
		o := &raw.offers[i]
		r := rule{kind: kindOffer, id: o.id.val, line: o.line}
		count(&r, o.when.val, o.score.val)
		for _, e := range o.payloadExpr {
			count(&r, e.val)
		}
		rules = append(rules, r)
	}
	for i := range raw.features {
		f := &raw.features[i]
		r := rule{kind: kindFeature, id: f.name.val, line: f.line}
		count(&r, f.expr.val)
		rules = append(rules, r)
	}
	slices.SortStableFunc(rules, func(a, b rule) int { return cmp.Compare(a.line, b.line) })
	var n, size int
	overN, overSize := -1, -1
	for i, r := range rules {
		n += r.n
		size += r.len
		if overN < 0 && n > l.MaxExpressions {
			overN = i
		}
		if overSize < 0 && size > l.MaxExpressionBytes {
			overSize = i
		}
	}
	if overN >= 0 {
		r := rules[overN]
		c.add(r.line, r.kind, r.id, "", "the file has %d expressions (when, cooldown_by, payload_expr, score, features), over the limit of %d (max_expressions) from this rule on",
			n, l.MaxExpressions)
	}
	if overSize >= 0 {
		r := rules[overSize]
		c.add(r.line, r.kind, r.id, "", "the expressions of the file are %d bytes together, over the limit of %d (max_expression_bytes) from this rule on",
			size, l.MaxExpressionBytes)
	}
	return overN < 0 && overSize < 0
}

// index files t under the event types it looks at; triggers without on
// apply to every type.
func (r *Rules) index(t *trigger, on []string) {
	if len(on) == 0 {
		r.anyType = append(r.anyType, t)
		return
	}
	if r.byType == nil {
		r.byType = make(map[string][]*trigger)
	}
	for _, typ := range on {
		r.byType[typ] = append(r.byType[typ], t)
	}
}

// triggersFor returns the triggers an event of type typ reaches.
func (r *Rules) triggersFor(typ string) triggerList {
	if r == nil {
		return triggerList{}
	}
	return triggerList{named: r.byType[typ], any: r.anyType}
}

// Text is the rules file these rules were parsed from (the console's
// playground edits a copy of it). Nil for nil rules. The caller must not
// modify it.
func (r *Rules) Text() []byte {
	if r == nil {
		return nil
	}
	return r.text
}

// Version is a short hash of the rules file's content: it changes exactly
// when the file does. "" for nil rules.
func (r *Rules) Version() string {
	if r == nil {
		return ""
	}
	return r.version
}

// Counts returns the number of triggers and offers.
func (r *Rules) Counts() (triggers, offers int) {
	if r == nil {
		return 0, 0
	}
	return len(r.triggers), len(r.offers)
}

type compiledTrigger struct {
	*trigger
	on []string
}

// checkID checks a rule id and that it is new in seen (ids of the same
// what: "trigger", "offer", "policy").
func checkID(c *collector, w where, id text, line int, seen map[string]int, what string) {
	switch {
	case !id.set || id.val == "":
		c.at(w, line, "id", "required")
	case !ruleIDPattern.MatchString(id.val):
		c.at(w, id.line, "id", "must match %s", ruleIDPattern)
	default:
		if first, dup := seen[id.val]; dup {
			c.at(w, id.line, "id", "duplicate %s id (first defined on line %d)", what, first)
			return
		}
		seen[id.val] = id.line
	}
}

// compiler compiles the rules of one file.
type compiler struct {
	c      *collector
	limits Limits
	// memo holds every expression compiled, by source: the same source
	// (as YAML aliases repeat it) is compiled once, and its program, which
	// is immutable, shared.
	memo map[exprKey]compiled
}

type exprKey struct {
	env  *cel.Env
	src  string
	want resultKind
}

// compiled is the outcome of compiling one source: a program and its
// estimated cost, or the problem to report wherever the source appears.
type compiled struct {
	x       *expr
	cost    uint64
	problem string
}

func (cc *compiler) compileTrigger(env *cel.Env, rt *rawTrigger, seen map[string]int) *compiledTrigger {
	c := cc.c
	w := where{kind: kindTrigger, rule: rt.id.val}
	before := len(c.errs) + c.dropped
	t := cc.compileStep(env, w, rt, seen, false)

	var on []string
	named := make(map[string]bool, len(rt.on))
	for _, typ := range rt.on {
		if !eventTypePattern.MatchString(typ.val) {
			c.at(w, typ.line, "on", "event type %q must match %s", typ.val, eventTypePattern)
			continue
		}
		if !named[typ.val] {
			named[typ.val] = true
			on = append(on, typ.val)
		}
	}
	t.on = on
	if len(rt.on) == 0 && rt.when.val == "" {
		c.at(w, rt.line, "", "needs on or when: as written it would fire on every event")
	}
	_, cerr := parseDuration(rt.cooldown.val)
	cooldownOK := rt.cooldown.val == "" || cerr == nil // compileStep reported it
	if rt.cooldownBy.val != "" {
		if cooldownOK && t.cooldown == 0 {
			c.at(w, rt.cooldownBy.line, "cooldown_by", "needs a positive cooldown")
		}
		t.cooldownBy = cc.compileExpr(env, w, "cooldown_by", rt.cooldownBy, stringResult, &t.cost)
	}
	t.priority = rt.priority
	t.ab, t.control = compileAB(c, w, rt.ab)
	if t.when != nil {
		t.lookback = lookback(t.when.src)
		t.byCategory = eventCategory.MatchString(t.when.src)
	}
	if len(rt.then) > maxSteps {
		c.at(w, rt.then[maxSteps].line, "then", "a journey has at most %d steps after its trigger", maxSteps)
	}
	t.steps = []*trigger{t}
	if len(rt.then) > 0 {
		for i := range rt.then[:min(len(rt.then), maxSteps)] {
			st := cc.compileStep(env, where{kind: kindStep, rule: rt.then[i].id.val}, &rt.then[i], seen, true)
			t.cost = addCost(t.cost, st.cost)
			t.steps = append(t.steps, st)
		}
	}
	if len(c.errs)+c.dropped != before {
		return nil
	}
	return &compiledTrigger{trigger: t, on: on}
}

// maxSteps bounds the steps of a journey after its trigger.
const maxSteps = 16

// compileStep compiles what a trigger and a step of its then share: id,
// when, wait, unless, cooldown, transactional and action. A step (then)
// must wait at least a second.
func (cc *compiler) compileStep(env *cel.Env, w where, rt *rawTrigger, seen map[string]int, step bool) *trigger {
	c := cc.c
	checkID(c, w, rt.id, rt.line, seen, kindTrigger)
	t := &trigger{id: rt.id.val, line: rt.line, cost: ruleCost, transactional: rt.transactional}
	if rt.when.val != "" {
		t.when = cc.compileExpr(env, w, "when", rt.when, boolResult, &t.cost)
	}
	if step || rt.wait.set {
		if d, ok := checkDuration(c, w, "wait", rt.wait, rt.line, step); ok && (d > 0 || rt.wait.set) {
			if d < time.Second {
				c.at(w, rt.wait.line, "wait", "must be at least 1s, got %s", rt.wait.val)
			}
			t.wait = d
		}
	}
	for _, u := range rt.unless {
		if !eventTypePattern.MatchString(u.val) {
			c.at(w, u.line, "unless", "event type %q must match %s", u.val, eventTypePattern)
			continue
		}
		if !slices.Contains(t.unless, u.val) {
			t.unless = append(t.unless, u.val)
		}
	}
	if len(t.unless) > 0 && t.wait == 0 && !step {
		c.at(w, rt.unless[0].line, "unless", "needs a wait: unless cancels a step between its event and its due time")
	}
	t.cooldown, _ = checkDuration(c, w, "cooldown", rt.cooldown, rt.line, false)
	if !rt.hasAction {
		line := rt.actionLine
		if line == 0 {
			line = rt.line
		}
		c.at(w, line, "action", "required (channel and template)")
	} else {
		t.channel = checkChannel(c, w, "action.channel", rt.channel, rt.actionLine)
		t.template = checkTemplate(c, w, "action.template", rt.template, rt.actionLine)
		t.payload, t.exprs = cc.compilePayload(env, w, "action.", rt.payload, rt.payloadExpr, &t.cost)
	}
	return t
}

// durationLiteral finds the duration("...") literals of an expression.
var durationLiteral = regexp.MustCompile(`duration\(\s*["']([^"']+)["']\s*\)`)

// eventCategory finds a use of the event's category in an expression.
var eventCategory = regexp.MustCompile(`event\s*(\.\s*category\b|\[\s*["']category["']\s*\])`)

// lookback is how far after a late event a trigger's when is judged
// again (Step): the longest duration literal of the expression (which
// may use days, as duration() does), at most maxLookback. An expression
// without one is judged at its event only.
func lookback(src string) time.Duration {
	var d time.Duration
	for _, m := range durationLiteral.FindAllStringSubmatch(src, -1) {
		if x, err := parseDuration(m[1]); err == nil && x > d {
			d = x
		}
	}
	return min(d, maxLookback)
}

// maxLookback bounds lookback, and so the re-evaluations of a trigger
// for one late event (one per later minute with events, at most
// maxReevaluations).
const maxLookback = 24 * time.Hour

// compileOffer compiles an offer in env, the offer environment with the
// file's features, whose costs featureCost gives by name.
func (cc *compiler) compileOffer(env *cel.Env, ro *rawOffer, seen map[string]int, featureCost map[string]uint64) *offer {
	c := cc.c
	w := where{kind: kindOffer, rule: ro.id.val}
	before := len(c.errs) + c.dropped
	checkID(c, w, ro.id, ro.line, seen, kindOffer)
	o := &offer{id: ro.id.val, line: ro.line, cost: ruleCost, priority: ro.priority}
	for _, ch := range ro.channels {
		if !channelPattern.MatchString(ch.val) {
			c.at(w, ch.line, "channels", "channel %q must match %s", ch.val, channelPattern)
			continue
		}
		o.channels.add(ch.val)
	}
	o.category = ro.category.val
	if strings.ContainsFunc(o.category, unicode.IsControl) || len(o.category) > 128 {
		c.at(w, ro.category.line, "category", "must be at most 128 bytes without control characters, like an event's category")
	}
	o.cooldown, _ = checkDuration(c, w, "cooldown", ro.cooldown, ro.line, false)
	o.cooldownText = ro.cooldown.val
	o.ab, o.control = compileAB(c, w, ro.ab)
	switch ro.selectMode.val {
	case "", "priority":
	case "thompson":
		o.thompson = true
	default:
		c.at(w, ro.selectMode.line, "select", "must be priority (the default: the first eligible offer by priority wins) or thompson (eligible thompson offers of the same priority compete on their measured conversions), got %q", ro.selectMode.val)
	}
	if ro.when.val != "" {
		o.when = cc.compileExpr(env, w, "when", ro.when, boolResult, &o.cost)
	}
	if ro.score.val != "" {
		if o.thompson {
			c.at(w, ro.score.line, "score", "cannot be used with select: thompson (thompson offers compete on their measured conversions, scored offers on their score)")
		}
		o.score = cc.compileExpr(env, w, "score", ro.score, numberResult, &o.cost)
	}
	o.template = checkTemplate(c, w, "template", ro.template, ro.line)
	o.payload, o.exprs = cc.compilePayload(env, w, "", ro.payload, ro.payloadExpr, &o.cost)
	if len(c.errs)+c.dropped != before {
		return nil
	}
	o.cost = addCost(o.cost, readsCost(featureCost, o.when, o.score, o.exprs))
	return o
}

// readsCost is the cost of the features an offer's expressions read:
// each is evaluated at most once per decision, so it counts once per
// offer.
func readsCost(featureCost map[string]uint64, when, score *expr, exprs []payloadExpr) uint64 {
	var names []string
	add := func(x *expr) {
		if x == nil {
			return
		}
		for _, n := range x.reads {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	add(when)
	add(score)
	for _, e := range exprs {
		add(e.expr)
	}
	var cost uint64
	for _, n := range names {
		cost = addCost(cost, featureCost[n])
	}
	return cost
}

// compileAB checks a rule's ab mapping (nil: none).
func compileAB(c *collector, w where, ab *rawAB) (bool, float64) {
	if ab == nil || !ab.ok {
		return false, 0
	}
	switch {
	case !ab.controlSeen:
		c.at(w, ab.line, "ab.control", "required: the share of users in the control group, in [0, 1)")
	case !ab.controlOK: // reported
	case !(ab.control >= 0 && ab.control < 1):
		c.at(w, ab.controlLine, "ab.control", "must be in [0, 1) (a share such as 0.1 for 10%%), got %v", ab.control)
	default:
		return true, ab.control
	}
	return false, 0
}

func checkChannel(c *collector, w where, field string, ch text, line int) string {
	switch {
	case ch.val == "":
		c.at(w, cmp.Or(ch.line, line), field, "required")
	case !channelPattern.MatchString(ch.val):
		c.at(w, ch.line, field, "%q must match %s", ch.val, channelPattern)
	}
	return ch.val
}

func checkTemplate(c *collector, w where, field string, tpl text, line int) string {
	if tpl.val == "" {
		c.at(w, cmp.Or(tpl.line, line), field, "required")
	}
	return tpl.val
}

// compilePayload compiles a rule's payload, adding 1 per entry to *cost:
// each is copied into every action or offer the rule makes.
func (cc *compiler) compilePayload(env *cel.Env, w where, prefix string, lit, exprs []entry, cost *uint64) (map[string]string, []payloadExpr) {
	c := cc.c
	payload := make(map[string]string, len(lit))
	for _, e := range lit {
		payload[e.key] = e.val
	}
	*cost = addCost(*cost, uint64(len(lit)+len(exprs)))
	var out []payloadExpr
	for _, e := range exprs {
		field := prefix + "payload_expr." + e.key
		if _, dup := payload[e.key]; dup {
			c.at(w, e.line, field, "key %q is also in payload", e.key)
			continue
		}
		if e.val == "" {
			c.at(w, e.line, field, "empty expression")
			continue
		}
		x := cc.compileExpr(env, w, field, text{val: e.val, line: e.line, set: true}, stringResult, cost)
		out = append(out, payloadExpr{key: e.key, field: field, expr: x})
	}
	return payload, out
}

type resultKind int

const (
	boolResult resultKind = iota + 1
	stringResult
	numberResult
	featureResult // a number or a bool, never dyn: see feature.eval
)

// compileExpr compiles one expression and adds its cost (exprCost) to
// *cost. It returns nil after reporting a problem.
func (cc *compiler) compileExpr(env *cel.Env, w where, field string, src text, want resultKind, cost *uint64) *expr {
	key := exprKey{env: env, src: src.val, want: want}
	got, ok := cc.memo[key]
	if !ok {
		got = cc.compile(env, src.val, want)
		cc.memo[key] = got
	}
	if got.problem != "" {
		cc.c.at(w, src.line, field, "%s", got.problem)
		return nil
	}
	*cost = addCost(*cost, got.cost)
	return got.x
}

// compile parses, bounds, type-checks, estimates and plans one source.
func (cc *compiler) compile(env *cel.Env, src string, want resultKind) compiled {
	if n := utf8.RuneCountInString(src); n > cc.limits.MaxExpressionLength {
		return compiled{problem: fmt.Sprintf("the expression is %d characters, over the limit of %d (max_expression_length)",
			n, cc.limits.MaxExpressionLength)}
	}
	parsed, iss := env.Parse(src)
	if iss.Err() != nil {
		return compiled{problem: iss.Err().Error()}
	}
	if d := nesting(parsed.NativeRep().Expr()); d > maxNesting {
		return compiled{problem: fmt.Sprintf("lists, maps and comprehensions (all, exists, map, filter) nest %d deep; at most %d", d, maxNesting)}
	}
	ast, iss := env.Check(parsed)
	if iss.Err() != nil {
		return compiled{problem: iss.Err().Error()}
	}
	out := ast.OutputType()
	switch want {
	case boolResult:
		if !out.IsExactType(cel.BoolType) {
			return compiled{problem: "must be a bool expression, but its type is " + cel.FormatCELType(out)}
		}
	case numberResult:
		if !out.IsExactType(cel.DoubleType) && !out.IsExactType(cel.IntType) && !out.IsExactType(cel.UintType) && !out.IsExactType(cel.DynType) {
			return compiled{problem: "must be a number (double or int), but its type is " + cel.FormatCELType(out)}
		}
	case featureResult:
		if !out.IsExactType(cel.DoubleType) && !out.IsExactType(cel.IntType) && !out.IsExactType(cel.UintType) && !out.IsExactType(cel.BoolType) {
			problem := "must be a number (int, uint or double) or a bool (1 or 0), but its type is " + cel.FormatCELType(out)
			if out.IsExactType(cel.DynType) {
				problem += " (convert it: double(...))"
			}
			return compiled{problem: problem}
		}
	case stringResult:
		if !stringConvertible(out) {
			return compiled{problem: "must give a string (or a number, bool, timestamp or duration), but its type is " + cel.FormatCELType(out)}
		}
	}
	est, err := env.EstimateCost(ast, sizeEstimator{})
	if err != nil {
		return compiled{problem: "estimating its cost: " + err.Error()}
	}
	// The runtime cost limit is kept only for expressions whose estimated
	// worst case exceeds it: the estimate counts every operation as the
	// runtime tracker does, with sizes bounded by what validation lets
	// in (sizeEstimator), so an expression estimated within MaxCost cannot
	// exceed it, and tracking its cost cost more than evaluating it (half
	// of a feature's evaluation).
	opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize)}
	if est.Max > MaxCost {
		opts = append(opts, cel.CostLimit(MaxCost))
	}
	prg, err := env.Program(ast, opts...)
	if err != nil {
		return compiled{problem: err.Error()}
	}
	return compiled{x: &expr{prg: prg, src: src, reads: featureReads(ast)}, cost: exprCost(est)}
}

// featureReads lists the features a checked expression reads, sorted.
func featureReads(a *cel.Ast) []string {
	var out []string
	for _, ref := range a.NativeRep().ReferenceMap() {
		if name, ok := strings.CutPrefix(ref.Name, featurePrefix); ok && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// nesting is how deeply list, map and message literals and comprehensions
// nest in e (see maxNesting). The parser bounds the depth of the tree, and
// so the recursion.
func nesting(e celast.Expr) int {
	if e == nil {
		return 0
	}
	deepest := func(es ...celast.Expr) int {
		d := 0
		for _, x := range es {
			d = max(d, nesting(x))
		}
		return d
	}
	switch e.Kind() {
	case celast.CallKind:
		call := e.AsCall()
		d := deepest(call.Args()...)
		if call.IsMemberFunction() {
			d = max(d, nesting(call.Target()))
		}
		return d
	case celast.SelectKind:
		return nesting(e.AsSelect().Operand())
	case celast.ListKind:
		return 1 + deepest(e.AsList().Elements()...)
	case celast.MapKind:
		d := 0
		for _, en := range e.AsMap().Entries() {
			me := en.AsMapEntry()
			d = max(d, nesting(me.Key()), nesting(me.Value()))
		}
		return 1 + d
	case celast.StructKind:
		d := 0
		for _, f := range e.AsStruct().Fields() {
			d = max(d, nesting(f.AsStructField().Value()))
		}
		return 1 + d
	case celast.ComprehensionKind:
		cx := e.AsComprehension()
		return 1 + deepest(cx.IterRange(), cx.AccuInit(), cx.LoopCondition(), cx.LoopStep(), cx.Result())
	}
	return 0
}

func stringConvertible(t *cel.Type) bool {
	switch t.Kind() {
	case types.StringKind, types.IntKind, types.UintKind, types.DoubleKind, types.BoolKind,
		types.TimestampKind, types.DurationKind, types.DynKind:
		return true
	}
	return false
}

// evalBool runs a when expression. A nil expression is true.
func (x *expr) evalBool(vars any) (bool, error) {
	if x == nil {
		return true, nil
	}
	out, _, err := x.prg.Eval(vars)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("got %s, want bool", out.Type().TypeName())
	}
	return bool(b), nil
}

// evalNumber runs an expression whose result is a finite number.
func (x *expr) evalNumber(vars any) (float64, error) {
	out, _, err := x.prg.Eval(vars)
	if err != nil {
		return 0, err
	}
	var f float64
	switch v := out.(type) {
	case types.Double:
		f = float64(v)
	case types.Int:
		f = float64(v)
	case types.Uint:
		f = float64(v)
	default:
		return 0, fmt.Errorf("got %s, want a number", out.Type().TypeName())
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("got %v, want a finite number", f)
	}
	return f, nil
}

// evalString runs an expression whose result is converted to a string.
func (x *expr) evalString(vars any) (string, error) {
	out, _, err := x.prg.Eval(vars)
	if err != nil {
		return "", err
	}
	return toString(out)
}

func toString(v ref.Val) (string, error) {
	if s, ok := v.(types.String); ok {
		return string(s), nil
	}
	switch v.(type) {
	case types.Int, types.Uint, types.Double, types.Bool, types.Timestamp, types.Duration:
		if s, ok := v.ConvertToType(types.StringType).(types.String); ok {
			return string(s), nil
		}
	}
	return "", fmt.Errorf("cannot convert %s to string", v.Type().TypeName())
}

// Channels returns every channel the rules name (trigger actions, offers,
// caps, quiet hours, fallbacks), sorted.
func (r *Rules) Channels() []string {
	if r == nil {
		return nil
	}
	set := map[string]bool{}
	for _, t := range r.triggers {
		set[t.channel] = true
	}
	for _, o := range r.offers {
		for _, ch := range o.channels.list {
			set[ch] = true
		}
	}
	for _, c := range r.caps {
		if c.channel != "" {
			set[c.channel] = true
		}
	}
	for _, q := range r.quiet {
		for _, ch := range q.channels.list {
			set[ch] = true
		}
	}
	for ch := range r.fallbacks {
		set[ch] = true
	}
	return slices.Sorted(maps.Keys(set))
}
