package decision

import (
	"cmp"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"cel.dev/cel-go/cel"
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
	triggers []*trigger // file order
	offers   []*offer   // by priority, highest first; ties in file order
	// Policies, in file order.
	defaultTZ        *time.Location // never nil once parsed
	caps             []*frequencyCap
	quiet            []*quietHours
	purchaseCooldown *purchaseCooldown // nil: none
	fallbacks        map[string]*fallback
	// byType lists the triggers to evaluate for an event type, in file
	// order; anyType those for types no trigger names (triggers without on).
	byType  map[string][]*trigger
	anyType []*trigger
}

type trigger struct {
	id         string
	when       *expr // nil: always
	cooldown   time.Duration
	cooldownBy *expr // nil: the key is the trigger id
	channel    string
	template   string
	payload    map[string]string
	exprs      []payloadExpr
}

type offer struct {
	id           string
	priority     int
	channels     []string // empty: any
	category     string   // "": none (no purchase cooldown)
	cooldown     time.Duration
	cooldownText string
	ab           bool
	control      float64 // share of users in the control group, [0, 1)
	when         *expr   // nil: always eligible
	template     string
	payload      map[string]string
	exprs        []payloadExpr
}

func (o *offer) forChannel(ch string) bool {
	return len(o.channels) == 0 || slices.Contains(o.channels, ch)
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
}

// Load reads and compiles the rules file at path.
func Load(path string) (*Rules, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("decision: read rules: %w", err)
	}
	return Parse(path, data)
}

// Parse compiles a rules file. name is used in error messages (usually the
// file path). Every problem found is reported, each as a *RuleError, joined
// with errors.Join; all of them match ErrInvalidRules.
func Parse(name string, data []byte) (*Rules, error) {
	env, err := envs()
	if err != nil {
		return nil, err
	}
	c := &collector{file: name}
	raw := readFile(c, data)
	r := &Rules{}
	seen := make(map[string]int) // id -> line of first definition
	for i := range raw.triggers {
		if t := compileTrigger(c, env.trigger, &raw.triggers[i], seen); t != nil {
			r.triggers = append(r.triggers, t.trigger)
			r.index(t.trigger, t.on)
		}
	}
	clear(seen)
	for i := range raw.offers {
		if o := compileOffer(c, env.offer, &raw.offers[i], seen); o != nil {
			r.offers = append(r.offers, o)
		}
	}
	compileSettings(c, &raw, r)
	compilePolicies(c, &raw, r, seen)
	compileFallbacks(c, &raw, r)
	if err := c.err(); err != nil {
		return nil, err
	}
	slices.SortStableFunc(r.offers, func(a, b *offer) int { return cmp.Compare(b.priority, a.priority) })
	r.version = contentVersion(data)
	return r, nil
}

// index files t under the event types it looks at. Triggers without on
// apply to every type, so they are also appended to every named type's
// list; file order is kept because triggers are indexed in file order.
func (r *Rules) index(t *trigger, on []string) {
	if r.byType == nil {
		r.byType = make(map[string][]*trigger)
	}
	if len(on) == 0 {
		r.anyType = append(r.anyType, t)
		for typ := range r.byType {
			r.byType[typ] = append(r.byType[typ], t)
		}
		return
	}
	for _, typ := range on {
		if _, ok := r.byType[typ]; !ok {
			r.byType[typ] = slices.Clone(r.anyType)
		}
		if l := r.byType[typ]; len(l) == 0 || l[len(l)-1] != t {
			r.byType[typ] = append(l, t)
		}
	}
}

func (r *Rules) triggersFor(typ string) []*trigger {
	if r == nil {
		return nil
	}
	if l, ok := r.byType[typ]; ok {
		return l
	}
	return r.anyType
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

func compileTrigger(c *collector, env *cel.Env, rt *rawTrigger, seen map[string]int) *compiledTrigger {
	w := where{kind: kindTrigger, rule: rt.id.val}
	before := len(c.errs) + c.dropped
	checkID(c, w, rt.id, rt.line, seen, kindTrigger)
	t := &trigger{id: rt.id.val}

	var on []string
	for _, typ := range rt.on {
		if !eventTypePattern.MatchString(typ.val) {
			c.at(w, typ.line, "on", "event type %q must match %s", typ.val, eventTypePattern)
			continue
		}
		if !slices.Contains(on, typ.val) {
			on = append(on, typ.val)
		}
	}
	if len(rt.on) == 0 && rt.when.val == "" {
		c.at(w, rt.line, "", "needs on or when: as written it would fire on every event")
	}
	if rt.when.val != "" {
		t.when = compileExpr(c, env, w, "when", rt.when, boolResult)
	}
	var cooldownOK bool
	t.cooldown, cooldownOK = checkDuration(c, w, "cooldown", rt.cooldown, rt.line, false)
	if rt.cooldownBy.val != "" {
		if cooldownOK && t.cooldown == 0 {
			c.at(w, rt.cooldownBy.line, "cooldown_by", "needs a positive cooldown")
		}
		t.cooldownBy = compileExpr(c, env, w, "cooldown_by", rt.cooldownBy, stringResult)
	}

	if !rt.hasAction {
		line := rt.actionLine
		if line == 0 {
			line = rt.line
		}
		c.at(w, line, "action", "required (channel and template)")
	} else {
		t.channel = checkChannel(c, w, "action.channel", rt.channel, rt.actionLine)
		t.template = checkTemplate(c, w, "action.template", rt.template, rt.actionLine)
		t.payload, t.exprs = compilePayload(c, env, w, "action.", rt.payload, rt.payloadExpr)
	}
	if len(c.errs)+c.dropped != before {
		return nil
	}
	return &compiledTrigger{trigger: t, on: on}
}

func compileOffer(c *collector, env *cel.Env, ro *rawOffer, seen map[string]int) *offer {
	w := where{kind: kindOffer, rule: ro.id.val}
	before := len(c.errs) + c.dropped
	checkID(c, w, ro.id, ro.line, seen, kindOffer)
	o := &offer{id: ro.id.val, priority: ro.priority}
	for _, ch := range ro.channels {
		if !channelPattern.MatchString(ch.val) {
			c.at(w, ch.line, "channels", "channel %q must match %s", ch.val, channelPattern)
			continue
		}
		if !slices.Contains(o.channels, ch.val) {
			o.channels = append(o.channels, ch.val)
		}
	}
	o.category = ro.category.val
	if strings.ContainsFunc(o.category, unicode.IsControl) || len(o.category) > 128 {
		c.at(w, ro.category.line, "category", "must be at most 128 bytes without control characters, like an event's category")
	}
	o.cooldown, _ = checkDuration(c, w, "cooldown", ro.cooldown, ro.line, false)
	o.cooldownText = ro.cooldown.val
	if ab := ro.ab; ab != nil && ab.ok {
		switch {
		case !ab.controlSeen:
			c.at(w, ab.line, "ab.control", "required: the share of users in the control group, in [0, 1)")
		case !ab.controlOK: // reported
		case !(ab.control >= 0 && ab.control < 1):
			c.at(w, ab.controlLine, "ab.control", "must be in [0, 1) (a share such as 0.1 for 10%%), got %v", ab.control)
		default:
			o.ab, o.control = true, ab.control
		}
	}
	if ro.when.val != "" {
		o.when = compileExpr(c, env, w, "when", ro.when, boolResult)
	}
	o.template = checkTemplate(c, w, "template", ro.template, ro.line)
	o.payload, o.exprs = compilePayload(c, env, w, "", ro.payload, ro.payloadExpr)
	if len(c.errs)+c.dropped != before {
		return nil
	}
	return o
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

func compilePayload(c *collector, env *cel.Env, w where, prefix string, lit, exprs []entry) (map[string]string, []payloadExpr) {
	payload := make(map[string]string, len(lit))
	for _, e := range lit {
		payload[e.key] = e.val
	}
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
		x := compileExpr(c, env, w, field, text{val: e.val, line: e.line, set: true}, stringResult)
		out = append(out, payloadExpr{key: e.key, field: field, expr: x})
	}
	return payload, out
}

type resultKind int

const (
	boolResult resultKind = iota + 1
	stringResult
)

// compileExpr parses, type-checks and plans one expression. It returns nil
// after reporting a problem.
func compileExpr(c *collector, env *cel.Env, w where, field string, src text, want resultKind) *expr {
	ast, iss := env.Compile(src.val)
	if iss.Err() != nil {
		c.at(w, src.line, field, "%s", iss.Err())
		return nil
	}
	out := ast.OutputType()
	switch want {
	case boolResult:
		if !out.IsExactType(cel.BoolType) {
			c.at(w, src.line, field, "must be a bool expression, but its type is %s", cel.FormatCELType(out))
			return nil
		}
	case stringResult:
		if !stringConvertible(out) {
			c.at(w, src.line, field, "must give a string (or a number, bool, timestamp or duration), but its type is %s",
				cel.FormatCELType(out))
			return nil
		}
	}
	prg, err := env.Program(ast, cel.CostLimit(MaxCost), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		c.at(w, src.line, field, "%v", err)
		return nil
	}
	return &expr{prg: prg, src: src.val}
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
		for _, ch := range o.channels {
			set[ch] = true
		}
	}
	for _, c := range r.caps {
		if c.channel != "" {
			set[c.channel] = true
		}
	}
	for _, q := range r.quiet {
		for _, ch := range q.channels {
			set[ch] = true
		}
	}
	for ch := range r.fallbacks {
		set[ch] = true
	}
	return slices.Sorted(maps.Keys(set))
}
