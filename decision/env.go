package decision

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"
	"cel.dev/cel-go/parser"

	"github.com/nudge-dm/nudge/profile"
)

// MaxCost is the CEL cost limit of one expression evaluation (roughly the
// number of operations). An expression that exceeds it fails with an
// evaluation error instead of stalling a batch or a decision. Rule
// expressions stay far below it: the seed trigger costs about 10. Only
// expressions whose estimated worst case exceeds it are tracked while they
// run (compile); the others cannot reach it.
const MaxCost = 10_000

// SinceNever is what profile.since gives for an event type the user never had:
// 100 years, longer than any window, so profile.since("purchase") >
// duration("720h") reads "no purchase in 30 days" for new users too.
const SinceNever = 100 * 365 * 24 * time.Hour

// ProfileType is the CEL type of the profile variable.
var profileType = cel.OpaqueType("nudge.Profile")

// eventFields are the keys of the event variable, in documentation order.
var eventFields = eventFieldsArray[:]

var eventType = cel.MapType(cel.StringType, cel.DynType)

// envs are built once: a cel.Env is immutable and safe for concurrent use.
// The offer environment of a file with features extends envs' offer
// environment with them (offerEnv).
var envs = sync.OnceValues(func() (*environments, error) {
	shared := []cel.EnvOption{
		cel.Variable("profile", profileType),
		cel.Variable("now", cel.TimestampType),
		ext.Strings(),
		cel.CrossTypeNumericComparisons(true),
		cel.DefaultUTCTimeZone(true),
		cel.Macros(dayDurationMacro),
		cel.ASTValidators(
			cel.ValidateDurationLiterals(),
			cel.ValidateTimestampLiterals(),
			cel.ValidateRegexLiterals(),
			cel.ValidateHomogeneousAggregateLiterals(),
			distinctFieldValidator{},
		),
	}
	shared = append(shared, profileFunctions()...)
	feat, err := cel.NewEnv(slices.Clip(shared)...)
	if err != nil {
		return nil, fmt.Errorf("decision: feature environment: %w", err)
	}
	trig, err := cel.NewEnv(append(slices.Clip(shared),
		cel.Variable("event", eventType),
		cel.ASTValidators(eventFieldValidator{}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("decision: trigger environment: %w", err)
	}
	off, err := cel.NewEnv(append(slices.Clip(shared),
		cel.Variable("channel", cel.StringType),
		cel.Variable("placement", cel.StringType),
		cel.Variable("context", cel.MapType(cel.StringType, cel.StringType)),
	)...)
	if err != nil {
		return nil, fmt.Errorf("decision: offer environment: %w", err)
	}
	return &environments{trigger: trig, offer: off, feature: feat}, nil
})

// environments are the CEL environments of rule expressions. feature is
// the offer environment without channel, placement and context: a
// feature depends on the user and the time only, so that it means the
// same in a decision, in GetFeatures and in an export.
type environments struct {
	trigger, offer, feature *cel.Env
}

// offerEnv is the offer environment of a file with features: each is a
// variable features.<name> of type double (a feature that fails makes
// the expression reading it fail), so that reading one the file does not
// define is a load error naming it.
func (e *environments) offerEnv(features []string) (*cel.Env, error) {
	if len(features) == 0 {
		return e.offer, nil
	}
	opts := make([]cel.EnvOption, len(features))
	for i, name := range features {
		opts[i] = cel.Variable(featurePrefix+name, cel.DoubleType)
	}
	return e.offer.Extend(opts...)
}

// featurePrefix is how offers name features: features.<name>.
const featurePrefix = "features."

// dayDurationMacro lets duration() take days, as rules-file durations do:
// duration("7d") is expanded, when the file is parsed, to
// duration("168h0m0s"). Only a string literal with a d unit that
// parseDuration reads is expanded; anything else is left to CEL's
// duration(), whose literal validator reports malformed literals at
// their position.
var dayDurationMacro = cel.GlobalMacro(overloads.TypeConvertDuration, 1,
	func(eh parser.ExprHelper, _ ast.Expr, args []ast.Expr) (ast.Expr, *common.Error) {
		if args[0].Kind() != ast.LiteralKind {
			return nil, nil
		}
		s, ok := args[0].AsLiteral().(types.String)
		if !ok || !strings.Contains(string(s), "d") { // Go durations have no d unit
			return nil, nil
		}
		d, err := parseDuration(string(s))
		if err != nil {
			return nil, nil
		}
		return eh.NewCall(overloads.TypeConvertDuration, eh.NewLiteral(types.String(d.String()))), nil
	})

// profileFunctions declares the member functions of profile. Every window
// ends at the evaluation's now (event time for triggers, processing time for
// offers).
func profileFunctions() []cel.EnvOption {
	p, str, dur := profileType, cel.StringType, cel.DurationType
	return []cel.EnvOption{
		cel.Function("count",
			cel.MemberOverload("profile_count_type_window", []*cel.Type{p, str, dur}, cel.IntType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					return count(args[0], args[1], nil, args[2])
				})),
			cel.MemberOverload("profile_count_type_category_window", []*cel.Type{p, str, str, dur}, cel.IntType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					return count(args[0], args[1], args[2], args[3])
				}))),
		cel.Function("total",
			cel.MemberOverload("profile_total_type", []*cel.Type{p, str}, cel.IntType,
				cel.BinaryBinding(func(pv, typ ref.Val) ref.Val {
					v, t, err := profileAnd[types.String](pv, typ)
					if err != nil {
						return err
					}
					return clampInt(v.p.Total(string(t)))
				}))),
		cel.Function("seen_within",
			cel.MemberOverload("profile_seen_within_type_window", []*cel.Type{p, str, dur}, cel.BoolType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					v, t, err := profileAnd[types.String](args[0], args[1])
					if err != nil {
						return err
					}
					w, errv := windowArg("seen_within", args[2])
					if errv != nil {
						return errv
					}
					last, ok := v.p.LastSeenAt(string(t))
					return types.Bool(ok && !last.Before(v.now.Add(-w)))
				}))),
		cel.Function("last_seen",
			cel.MemberOverload("profile_last_seen_type", []*cel.Type{p, str}, cel.TimestampType,
				cel.BinaryBinding(func(pv, typ ref.Val) ref.Val {
					v, t, err := profileAnd[types.String](pv, typ)
					if err != nil {
						return err
					}
					last, ok := v.p.LastSeenAt(string(t))
					if !ok {
						return types.Timestamp{Time: time.Unix(0, 0).UTC()}
					}
					return types.Timestamp{Time: last}
				}))),
		cel.Function("since",
			cel.MemberOverload("profile_since_type", []*cel.Type{p, str}, dur,
				cel.BinaryBinding(func(pv, typ ref.Val) ref.Val {
					v, t, err := profileAnd[types.String](pv, typ)
					if err != nil {
						return err
					}
					last, ok := v.p.LastSeenAt(string(t))
					if !ok {
						return types.Duration{Duration: SinceNever}
					}
					return types.Duration{Duration: max(v.now.Sub(last), 0)}
				}))),
		cel.Function("sends",
			cel.MemberOverload("profile_sends_channel_window", []*cel.Type{p, str, dur}, cel.IntType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					v, ch, err := profileAnd[types.String](args[0], args[1])
					if err != nil {
						return err
					}
					w, errv := windowArg("sends", args[2])
					if errv != nil {
						return errv
					}
					return types.Int(v.p.Sends(string(ch), v.now.Add(-w)))
				}))),
		cel.Function("last_purchase_within",
			cel.MemberOverload("profile_last_purchase_within_category_window", []*cel.Type{p, str, dur}, cel.BoolType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					v, cat, err := profileAnd[types.String](args[0], args[1])
					if err != nil {
						return err
					}
					w, errv := windowArg("last_purchase_within", args[2])
					if errv != nil {
						return errv
					}
					last, ok := v.p.LastPurchase(string(cat))
					return types.Bool(ok && cat != "" && !last.Before(v.now.Add(-w)))
				}))),
		cel.Function("purchase_count",
			cel.MemberOverload("profile_purchase_count", []*cel.Type{p}, cel.IntType,
				cel.UnaryBinding(func(pv ref.Val) ref.Val {
					v, ok := pv.(*profileVal)
					if !ok {
						return types.MaybeNoSuchOverloadErr(pv)
					}
					return clampInt(v.p.PurchaseCount)
				}))),
		cel.Function("purchase_value",
			cel.MemberOverload("profile_purchase_value", []*cel.Type{p}, cel.DoubleType,
				cel.UnaryBinding(func(pv ref.Val) ref.Val {
					v, ok := pv.(*profileVal)
					if !ok {
						return types.MaybeNoSuchOverloadErr(pv)
					}
					return types.Double(v.p.PurchaseValue)
				}))),
		cel.Function("consented",
			cel.MemberOverload("profile_consented_channel", []*cel.Type{p, str}, cel.BoolType,
				cel.BinaryBinding(func(pv, ch ref.Val) ref.Val {
					v, c, err := profileAnd[types.String](pv, ch)
					if err != nil {
						return err
					}
					return types.Bool(v.p.Consented(string(c)))
				}))),
		cel.Function("attr",
			cel.MemberOverload("profile_attr_name", []*cel.Type{p, str}, cel.StringType,
				cel.BinaryBinding(func(pv, name ref.Val) ref.Val {
					v, n, err := profileAnd[types.String](pv, name)
					if err != nil {
						return err
					}
					return types.String(v.p.Attr(string(n)))
				}))),
		cel.Function("sum",
			cel.MemberOverload("profile_sum_type_window", []*cel.Type{p, str, dur}, cel.DoubleType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					return sum(args[0], args[1], nil, args[2])
				})),
			cel.MemberOverload("profile_sum_type_category_window", []*cel.Type{p, str, str, dur}, cel.DoubleType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					return sum(args[0], args[1], args[2], args[3])
				}))),
		cel.Function("monetary",
			cel.MemberOverload("profile_monetary_window", []*cel.Type{p, dur}, cel.DoubleType,
				cel.BinaryBinding(func(pv, window ref.Val) ref.Val {
					v, ok := pv.(*profileVal)
					if !ok {
						return types.MaybeNoSuchOverloadErr(pv)
					}
					w, errv := windowArg("monetary", window)
					if errv != nil {
						return errv
					}
					return types.Double(v.p.Sum(profile.TypePurchase, "", w, v.now))
				}))),
		cel.Function("distinct",
			cel.MemberOverload("profile_distinct_type_field_window", []*cel.Type{p, str, str, dur}, cel.IntType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					v, t, err := profileAnd[types.String](args[0], args[1])
					if err != nil {
						return err
					}
					f, ok := args[2].(types.String)
					if !ok {
						return types.MaybeNoSuchOverloadErr(args[2])
					}
					if f != distinctField {
						return types.NewErr("distinct: %s", distinctFieldProblem(string(f)))
					}
					w, errv := windowArg("distinct", args[3])
					if errv != nil {
						return errv
					}
					return types.Int(v.p.Distinct(string(t), w, v.now))
				}))),
		cel.Function("sessions",
			cel.MemberOverload("profile_sessions_window_gap", []*cel.Type{p, dur, dur}, cel.IntType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					v, ok := args[0].(*profileVal)
					if !ok {
						return types.MaybeNoSuchOverloadErr(args[0])
					}
					w, errv := windowArg("sessions", args[1])
					if errv != nil {
						return errv
					}
					gap, ok := args[2].(types.Duration)
					if !ok {
						return types.MaybeNoSuchOverloadErr(args[2])
					}
					if gap.Duration <= 0 {
						return types.NewErr("sessions: the gap must be positive, got %s", gap.Duration)
					}
					return types.Int(v.p.Sessions(w, gap.Duration, v.now))
				}))),
		cel.Function("active_days",
			cel.MemberOverload("profile_active_days_window", []*cel.Type{p, dur}, cel.IntType,
				cel.BinaryBinding(func(pv, window ref.Val) ref.Val {
					v, ok := pv.(*profileVal)
					if !ok {
						return types.MaybeNoSuchOverloadErr(pv)
					}
					w, errv := windowArg("active_days", window)
					if errv != nil {
						return errv
					}
					return types.Int(v.p.ActiveDays(w, v.now))
				}))),
		cel.Function("days_since",
			cel.MemberOverload("profile_days_since_type", []*cel.Type{p, str}, cel.DoubleType,
				cel.BinaryBinding(func(pv, typ ref.Val) ref.Val {
					v, t, err := profileAnd[types.String](pv, typ)
					if err != nil {
						return err
					}
					since := SinceNever
					if last, ok := v.p.LastSeenAt(string(t)); ok {
						since = max(v.now.Sub(last), 0)
					}
					return types.Double(float64(since) / float64(day))
				}))),
	}
}

// profileAnd unpacks a receiver and one argument. The declared signatures
// and cel-go's type guards make a mismatch impossible; it is checked anyway
// so that no input can panic.
func profileAnd[T ref.Val](pv, arg ref.Val) (*profileVal, T, ref.Val) {
	var zero T
	v, ok := pv.(*profileVal)
	if !ok {
		return nil, zero, types.MaybeNoSuchOverloadErr(pv)
	}
	a, ok := arg.(T)
	if !ok {
		return nil, zero, types.MaybeNoSuchOverloadErr(arg)
	}
	return v, a, nil
}

func count(pv, typ, category, window ref.Val) ref.Val {
	v, t, err := profileAnd[types.String](pv, typ)
	if err != nil {
		return err
	}
	var cat types.String
	if category != nil {
		if cat, _ = category.(types.String); cat == "" {
			if _, ok := category.(types.String); !ok {
				return types.MaybeNoSuchOverloadErr(category)
			}
			// An empty category would count every category: almost
			// certainly a missing event.category, not what the rule means.
			return types.Int(0)
		}
	}
	w, errv := windowArg("count", window)
	if errv != nil {
		return errv
	}
	return types.Int(v.p.Count(string(t), string(cat), w, v.now))
}

// sum is count for the values of the events: an empty category gives 0,
// as count's does.
func sum(pv, typ, category, window ref.Val) ref.Val {
	v, t, err := profileAnd[types.String](pv, typ)
	if err != nil {
		return err
	}
	var cat types.String
	if category != nil {
		c, ok := category.(types.String)
		if !ok {
			return types.MaybeNoSuchOverloadErr(category)
		}
		if c == "" {
			return types.Double(0)
		}
		cat = c
	}
	w, errv := windowArg("sum", window)
	if errv != nil {
		return errv
	}
	return types.Double(v.p.Sum(string(t), string(cat), w, v.now))
}

// distinctField is the one field profile.distinct counts the distinct
// values of: the profile keeps counts per type and category only.
const distinctField = "category"

func distinctFieldProblem(field string) string {
	return fmt.Sprintf("field %q is not supported (only %q: the profile counts events per type and category)", field, distinctField)
}

// distinctFieldValidator rejects profile.distinct(type, "<field>", window)
// for a literal field other than category at load time; a field that is
// not a literal is checked when evaluated.
type distinctFieldValidator struct{}

func (distinctFieldValidator) Name() string { return "nudge.distinct_field" }

func (distinctFieldValidator) Validate(_ *cel.Env, _ cel.ValidatorConfig, a *ast.AST, iss *cel.Issues) {
	for _, e := range ast.MatchDescendants(ast.NavigateAST(a), ast.FunctionMatcher("distinct")) {
		call := e.AsCall()
		args := call.Args()
		if !call.IsMemberFunction() || len(args) != 3 || args[1].Kind() != ast.LiteralKind ||
			!a.GetType(call.Target().ID()).IsExactType(profileType) {
			continue
		}
		if f, ok := args[1].AsLiteral().(types.String); ok && f != distinctField {
			iss.ReportErrorAtID(args[1].ID(), "profile.distinct: %s", distinctFieldProblem(string(f)))
		}
	}
}

func clampInt(n uint64) types.Int {
	if n > math.MaxInt64 {
		return types.Int(math.MaxInt64)
	}
	return types.Int(n)
}

// profileVal is the CEL value of the profile variable: the profile and the
// instant every window ends at.
type profileVal struct {
	p   *profile.Profile
	now time.Time
}

var profilePtrType = reflect.TypeFor[*profile.Profile]()

func (v *profileVal) ConvertToNative(t reflect.Type) (any, error) {
	if t == profilePtrType {
		return v.p, nil
	}
	return nil, fmt.Errorf("type conversion error from %s to %v", profileType, t)
}

func (v *profileVal) ConvertToType(t ref.Type) ref.Val {
	if t == types.TypeType {
		return profileType
	}
	return types.NewErr("type conversion error from '%s' to '%s'", profileType, t)
}

func (v *profileVal) Equal(other ref.Val) ref.Val {
	o, ok := other.(*profileVal)
	return types.Bool(ok && o.p == v.p && o.now.Equal(v.now))
}

func (v *profileVal) Type() ref.Type { return profileType }
func (v *profileVal) Value() any     { return v.p }

// eventVal is the CEL value of the event variable: a read-only map view of
// a profile.Event, so that evaluating triggers does not build a map per
// event. Field values are boxed once per event and shared by every
// expression of every trigger (set resets the cache). The rare whole-map
// operations (size, iteration, equality) use a full copy.
type eventVal struct {
	e    *profile.Event
	vals [len(eventFieldsArray)]ref.Val
}

var eventFieldsArray = [...]string{"id", "user_id", "type", "category", "item_id", "value", "channel", "attributes", "occurred_at"}

var _ traits.Mapper = (*eventVal)(nil)

func (v *eventVal) set(e *profile.Event) {
	v.e = e
	clear(v.vals[:])
}

func (v *eventVal) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return types.MaybeNoSuchOverloadErr(key), false
	}
	i := slices.Index(eventFields, string(k))
	if i < 0 {
		return nil, false
	}
	if val := v.vals[i]; val != nil {
		return val, true
	}
	var val ref.Val
	switch e := v.e; i {
	case 0:
		val = types.String(e.ID)
	case 1:
		val = types.String(e.UserID)
	case 2:
		val = types.String(e.Type)
	case 3:
		val = types.String(e.Category)
	case 4:
		val = types.String(e.ItemID)
	case 5:
		val = types.Double(e.Value)
	case 6:
		val = types.String(e.Channel)
	case 7:
		val = types.NewStringStringMap(types.DefaultTypeAdapter, e.Attributes)
	case 8:
		val = types.Timestamp{Time: e.OccurredAt}
	}
	v.vals[i] = val
	return val, true
}

func (v *eventVal) Get(key ref.Val) ref.Val {
	val, found := v.Find(key)
	if found || val != nil {
		return val
	}
	return types.NewErr("no such key: %v", key)
}

func (v *eventVal) Contains(key ref.Val) ref.Val {
	val, found := v.Find(key)
	if !found && val != nil {
		return val
	}
	return types.Bool(found)
}

func (v *eventVal) full() traits.Mapper {
	m := make(map[ref.Val]ref.Val, len(eventFields))
	for _, f := range eventFields {
		m[types.String(f)], _ = v.Find(types.String(f))
	}
	return types.NewRefValMap(types.DefaultTypeAdapter, m)
}

func (v *eventVal) Iterator() traits.Iterator { return v.full().Iterator() }
func (v *eventVal) Size() ref.Val             { return types.Int(len(eventFields)) }
func (v *eventVal) Equal(other ref.Val) ref.Val {
	return v.full().Equal(other)
}
func (v *eventVal) ConvertToNative(t reflect.Type) (any, error) {
	return v.full().ConvertToNative(t)
}
func (v *eventVal) ConvertToType(t ref.Type) ref.Val { return v.full().ConvertToType(t) }
func (v *eventVal) Type() ref.Type                   { return types.MapType }
func (v *eventVal) Value() any                       { return v.e }

// triggerVars is the activation of trigger expressions. One is reused for
// every event and trigger of a Step call, instead of a map per evaluation.
type triggerVars struct {
	event, profile, now ref.Val
}

func (a *triggerVars) ResolveName(name string) (any, bool) {
	switch name {
	case "event":
		return a.event, true
	case "profile":
		return a.profile, true
	case "now":
		return a.now, true
	}
	return nil, false
}

func (a *triggerVars) Parent() interpreter.Activation { return nil }

// offerVars is the activation of offer expressions. It is also the
// activation of the features they read (features.<name>): each is
// evaluated on the decision's profile at its now the first time it is
// read, and remembered for the rest of the decision.
type offerVars struct {
	profile, now, channel, placement, context ref.Val
	// rules are the rules deciding, when they have features; feats
	// holds the features read so far (nil until the first).
	rules *Rules
	feats []ref.Val
}

func (a *offerVars) ResolveName(name string) (any, bool) {
	switch name {
	case "profile":
		return a.profile, true
	case "now":
		return a.now, true
	case "channel":
		return a.channel, true
	case "placement":
		return a.placement, true
	case "context":
		return a.context, true
	}
	if f, ok := strings.CutPrefix(name, featurePrefix); ok && a.rules != nil {
		return a.feature(f)
	}
	return nil, false
}

// feature evaluates the named feature once per decision. A feature that
// fails gives its error, which makes the expression reading it fail.
func (a *offerVars) feature(name string) (ref.Val, bool) {
	i, ok := a.rules.featureIndex[name]
	if !ok {
		return nil, false
	}
	if a.feats == nil {
		a.feats = make([]ref.Val, len(a.rules.features))
	}
	if v := a.feats[i]; v != nil {
		return v, true
	}
	// The feature's program reads only profile and now, which a resolves.
	x, err := a.rules.features[i].eval(a)
	var v ref.Val = types.Double(x)
	if err != nil {
		v = types.WrapErr(err)
	}
	a.feats[i] = v
	return v, true
}

func (a *offerVars) Parent() interpreter.Activation { return nil }

// eventFieldValidator rejects event.<name> and event["<name>"] for names the
// event does not have, at load time: event is declared as map(string, dyn),
// so the type checker alone would let a typo through to fail on every event.
type eventFieldValidator struct{}

func (eventFieldValidator) Name() string { return "nudge.event_fields" }

func (eventFieldValidator) Validate(_ *cel.Env, _ cel.ValidatorConfig, a *ast.AST, iss *cel.Issues) {
	isEvent := func(e ast.Expr) bool {
		return e.Kind() == ast.IdentKind && e.AsIdent() == "event" && a.GetType(e.ID()).IsExactType(eventType)
	}
	check := func(id int64, name string) {
		if !slices.Contains(eventFields, name) {
			iss.ReportErrorAtID(id, "event has no field %q (fields: %s)", name, strings.Join(eventFields, ", "))
		}
	}
	root := ast.NavigateAST(a)
	for _, e := range ast.MatchDescendants(root, ast.KindMatcher(ast.SelectKind)) {
		if sel := e.AsSelect(); isEvent(sel.Operand()) {
			check(e.ID(), sel.FieldName())
		}
	}
	for _, e := range ast.MatchDescendants(root, ast.FunctionMatcher("_[_]")) {
		args := e.AsCall().Args()
		if len(args) == 2 && isEvent(args[0]) && args[1].Kind() == ast.LiteralKind {
			if s, ok := args[1].AsLiteral().(types.String); ok {
				check(e.ID(), string(s))
			}
		}
	}
}

// windowArg is the window argument of a profile function: a duration, not
// negative.
func windowArg(fn string, v ref.Val) (time.Duration, ref.Val) {
	w, ok := v.(types.Duration)
	if !ok {
		return 0, types.MaybeNoSuchOverloadErr(v)
	}
	if w.Duration < 0 {
		return 0, types.NewErr("%s: negative window %s", fn, w.Duration)
	}
	return w.Duration, nil
}
