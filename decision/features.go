package decision

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"

	"github.com/nudge-dm/nudge/profile"
)

// Features are named numbers about a user computed from their profile
// by CEL expressions (the features section of a rules file): what models
// are trained on and scored with (GetFeatures, nudgectl features
// export), and what offers may read as features.<name>. A feature sees
// only profile and now, so that it means the same wherever it is read.

// Feature is one named feature of a rules file's features section.
type Feature struct {
	Name        string
	Description string
	// Expr is the CEL source.
	Expr string
}

// FeatureValue is one feature evaluated on one profile: Err is set (and
// Value 0) when the expression failed on it.
type FeatureValue struct {
	Name  string
	Value float64
	Err   error
}

// ErrUnknownFeature is what CheckFeatures' error, and the Err of a
// FeatureValue of a name the rules do not define, match (errors.Is).
var ErrUnknownFeature = errors.New("decision: unknown feature")

// featureNamePattern is what a feature name matches: it is read in CEL
// as features.<name> and is a column name in exports.
var featureNamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

// celKeywords are the names the pattern allows that CEL cannot select:
// features.in does not parse.
var celKeywords = []string{"false", "in", "null", "true"}

// feature is one compiled feature.
type feature struct {
	name, description string
	x                 *expr
	cost              uint64 // exprCost of x, added to the offers that read it
}

// eval evaluates the feature with vars (which must resolve profile and
// now): a finite number, a bool as 1 or 0. The error names the feature:
// "features.<name>: <why>".
func (f *feature) eval(vars any) (float64, error) {
	out, _, err := f.x.prg.Eval(vars)
	if err != nil {
		return 0, fmt.Errorf("%s%s: %w", featurePrefix, f.name, err)
	}
	var v float64
	switch o := out.(type) {
	case types.Double:
		v = float64(o)
	case types.Int:
		v = float64(o)
	case types.Uint:
		v = float64(o)
	case types.Bool:
		if o {
			v = 1
		}
	default:
		return 0, fmt.Errorf("%s%s: got %s, want a number", featurePrefix, f.name, out.Type().TypeName())
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%s%s: got %v, want a finite number", featurePrefix, f.name, v)
	}
	return v, nil
}

// Features returns the features of the rules, in file order.
func (r *Rules) Features() []Feature {
	if r == nil || len(r.features) == 0 {
		return nil
	}
	out := make([]Feature, len(r.features))
	for i, f := range r.features {
		out[i] = Feature{Name: f.name, Description: f.description, Expr: f.x.src}
	}
	return out
}

// maxListedFeatures bounds the defined features CheckFeatures' error
// lists.
const maxListedFeatures = 50

// CheckFeatures returns an error naming every name that is not a feature
// of the rules (nil when all are). It matches ErrUnknownFeature and lists
// the features the rules define (the first 50).
func (r *Rules) CheckFeatures(names []string) error {
	var unknown []string
	for _, n := range names {
		if _, ok := r.featureIdx(n); !ok && !slices.Contains(unknown, n) {
			unknown = append(unknown, n)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	var b strings.Builder
	for i, n := range unknown {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(n))
	}
	var defined []string
	if r != nil {
		defined = make([]string, 0, min(len(r.features), maxListedFeatures))
		for _, f := range r.features[:min(len(r.features), maxListedFeatures)] {
			defined = append(defined, f.name)
		}
	}
	switch {
	case len(defined) == 0:
		b.WriteString(" (the rules define no features)")
	case r != nil && len(r.features) > len(defined):
		fmt.Fprintf(&b, " (the rules define %s and %d more)", strings.Join(defined, ", "), len(r.features)-len(defined))
	default:
		fmt.Fprintf(&b, " (the rules define %s)", strings.Join(defined, ", "))
	}
	return fmt.Errorf("%w: %s", ErrUnknownFeature, b.String())
}

// featureIdx finds a feature by name.
func (r *Rules) featureIdx(name string) (int, bool) {
	if r == nil {
		return 0, false
	}
	i, ok := r.featureIndex[name]
	return i, ok
}

// featureVars is the activation of features outside decisions. They are
// pooled: EvalFeatures runs for every profile of an export.
type featureVars struct {
	pv  profileVal
	now ref.Val
}

func (a *featureVars) ResolveName(name string) (any, bool) {
	switch name {
	case "profile":
		return &a.pv, true
	case "now":
		return a.now, true
	}
	return nil, false
}

func (a *featureVars) Parent() interpreter.Activation { return nil }

var featureVarsPool = sync.Pool{New: func() any { return new(featureVars) }}

// emptyProfile stands for a nil profile; the functions only read it.
var emptyProfile = &profile.Profile{}

// EvalFeatures evaluates the named features (every feature, in file
// order, when names is empty) on p at now, appending to out. Names must
// have passed CheckFeatures: one that did not gets a value whose Err
// matches ErrUnknownFeature. p may be an empty profile (a user never
// seen), or nil for one. A feature that fails on p, or gives NaN or an
// infinity, gets a value with Err ("features.<name>: <why>") and Value 0.
// EvalFeatures is safe for concurrent use; it does not modify p.
func (r *Rules) EvalFeatures(p *profile.Profile, names []string, now time.Time, out []FeatureValue) []FeatureValue {
	if r == nil && len(names) == 0 {
		return out
	}
	if p == nil {
		p = emptyProfile
	}
	vars := featureVarsPool.Get().(*featureVars)
	vars.pv = profileVal{p: p, now: now}
	vars.now = types.Timestamp{Time: now}
	one := func(f *feature) FeatureValue {
		v, err := f.eval(vars)
		return FeatureValue{Name: f.name, Value: v, Err: err}
	}
	if len(names) == 0 {
		out = slices.Grow(out, len(r.features))
		for _, f := range r.features {
			out = append(out, one(f))
		}
	} else {
		out = slices.Grow(out, len(names))
		for _, n := range names {
			i, ok := r.featureIdx(n)
			if !ok {
				out = append(out, FeatureValue{Name: n, Err: fmt.Errorf("%w: %q", ErrUnknownFeature, n)})
				continue
			}
			out = append(out, one(r.features[i]))
		}
	}
	*vars = featureVars{} // keep no profile alive in the pool
	featureVarsPool.Put(vars)
	return out
}

// compileFeatures compiles the features section. It returns the features
// compiled, and the names of every feature with a valid name, even one
// whose expression is wrong: offers are compiled against all of them, so
// that a wrong feature is reported once, where it is defined, and not
// again in every offer that reads it.
func (cc *compiler) compileFeatures(env *cel.Env, raw []rawFeature) ([]*feature, []string) {
	c := cc.c
	var out []*feature
	var names []string
	seen := make(map[string]int, len(raw)) // name -> line of first definition
	for i := range raw {
		rf := &raw[i]
		w := where{kind: kindFeature, rule: rf.name.val}
		before := len(c.errs) + c.dropped
		switch name := rf.name.val; {
		case name == "":
			c.at(w, cmp.Or(rf.name.line, rf.line), "name", "required")
		case !featureNamePattern.MatchString(name):
			c.at(w, rf.name.line, "name", "must match %s", featureNamePattern)
		case slices.Contains(celKeywords, name):
			c.at(w, rf.name.line, "name", "%q is a CEL keyword: offers could not read %s%s", name, featurePrefix, name)
		default:
			if first, dup := seen[name]; dup {
				c.at(w, rf.name.line, "name", "duplicate feature name (first defined on line %d)", first)
				break
			}
			seen[name] = rf.name.line
			names = append(names, name)
		}
		f := &feature{name: rf.name.val, description: rf.description.val}
		if rf.expr.val == "" {
			c.at(w, cmp.Or(rf.expr.line, rf.line), "expr", "required")
		} else {
			f.x = cc.compileExpr(env, w, "expr", rf.expr, featureResult, &f.cost)
		}
		if len(c.errs)+c.dropped == before {
			out = append(out, f)
		}
	}
	return out, names
}
