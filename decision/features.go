package decision

import (
	"time"

	"github.com/nudge-dm/nudge/profile"
)

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

// Features returns the features of the rules, in file order.
func (r *Rules) Features() []Feature {
	return nil // TODO(issue 19)
}

// CheckFeatures returns an error naming every name that is not a feature
// of the rules (nil when all are).
func (r *Rules) CheckFeatures(names []string) error {
	return nil // TODO(issue 19)
}

// EvalFeatures evaluates the named features (every feature, in file
// order, when names is empty) on p at now, appending to out. Names must
// have passed CheckFeatures. p may be an empty profile (a user never
// seen).
func (r *Rules) EvalFeatures(p *profile.Profile, names []string, now time.Time, out []FeatureValue) []FeatureValue {
	return out // TODO(issue 19)
}
