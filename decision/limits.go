package decision

import (
	"io"
	"os"
)

// Limits bound what a rules file may ask of nudge, so that no file, by
// mistake or by design, can exhaust memory while it is read, hold a reload
// for minutes, or make every event or decision slow. A file over any limit
// is refused as a whole with a *RuleError naming the limit (by its YAML
// key, as in nudged's rules settings), the value found and, where there is
// one, the line. A zero (or negative) field means its default
// (DefaultLimits). docs/rules.md ("Limits") explains them for rule
// authors.
//
// The defaults let a file of 1,000 triggers and 1,000 offers through.
// The worst file they allow (BenchmarkParseWorstCase) parses in about 3 s
// of one core, creating about 650 MB of short-lived garbage, almost all of
// it CEL's parser's; nudged spends that off the serving path, in the
// goroutine that reloads, while the rules in force keep serving. The
// costliest event or decision they allow takes 1 to 2 ms.
type Limits struct {
	// MaxBytes is the largest rules file, in bytes. Load reads at most one
	// byte more, so a device or pipe that never ends (/dev/zero) is
	// refused instead of read until memory runs out. Default 1 MiB.
	MaxBytes int `yaml:"max_bytes"`
	// MaxYAMLNodes bounds the YAML nodes of the file, counting what every
	// alias (*name) stands for as if it were written out: a few lines of
	// aliases of aliases (a "billion laughs") stand for billions of nodes,
	// and reading a rule costs the same through an alias. Default 250,000
	// (1,000 triggers and 1,000 offers like those of examples/rules.yaml
	// have about 50,000).
	MaxYAMLNodes int `yaml:"max_yaml_nodes"`
	// MaxTriggers bounds the triggers of the file. Default 1,000.
	MaxTriggers int `yaml:"max_triggers"`
	// MaxOffers bounds the offers of the file. Default 1,000.
	MaxOffers int `yaml:"max_offers"`
	// MaxFeatures bounds the features of the file. Default 1,000.
	MaxFeatures int `yaml:"max_features"`
	// MaxPolicies bounds the frequency caps and quiet hours together:
	// every decision checks every one of them. Default 100.
	MaxPolicies int `yaml:"max_policies"`
	// MaxExpressions bounds the CEL expressions of the file (each when,
	// cooldown_by, score and payload_expr entry, and each feature), which
	// every load compiles. Default 10,000.
	MaxExpressions int `yaml:"max_expressions"`
	// MaxExpressionLength bounds the source of one expression, in
	// characters (Unicode code points). Default 4,096.
	MaxExpressionLength int `yaml:"max_expression_length"`
	// MaxExpressionBytes bounds the sources of all the expressions of the
	// file together, in bytes, an expression repeated through a YAML alias
	// counting each time. Compiling CEL takes 2 to 12 µs and up to 2 KB
	// of garbage per byte of source, depending on its shape, so this is
	// what bounds the time and memory a load takes. Default 256 KiB (2,000
	// rules with 128 bytes of expressions each).
	MaxExpressionBytes int `yaml:"max_expression_bytes"`
	// MaxEventCost bounds the work one event may cause: the cost of the
	// triggers its type reaches (those that name it in on, and those
	// without on), summed. A trigger costs 10, plus 1 per payload entry,
	// plus for each expression 1 and CEL's static estimate of its worst
	// case, in the unit of MaxCost (about one operation, 50 to 100 ns;
	// strings and lists count by their length, taking the longest an event
	// may carry), at most MaxCost, where its evaluation stops. Default
	// 20,000, about 1 to 2 ms: twice the most one expression may cost. The
	// costliest event type of examples/rules.yaml costs 57.
	MaxEventCost int `yaml:"max_event_cost"`
	// MaxDecisionCost bounds the work of one decision: the cost of the
	// offers its channel reaches (those that list it, and those that list
	// no channel), summed, each counted as a trigger is, plus the cost of
	// the features each reads. Default 20,000. The costliest channel of
	// examples/rules.yaml (email) costs 97.
	MaxDecisionCost int `yaml:"max_decision_cost"`
}

// DefaultLimits returns the limits a rules file is held to when told
// nothing.
func DefaultLimits() Limits {
	return Limits{
		MaxBytes:            1 << 20,
		MaxYAMLNodes:        250_000,
		MaxTriggers:         1_000,
		MaxOffers:           1_000,
		MaxFeatures:         1_000,
		MaxPolicies:         100,
		MaxExpressions:      10_000,
		MaxExpressionLength: 4_096,
		MaxExpressionBytes:  256 << 10,
		MaxEventCost:        20_000,
		MaxDecisionCost:     20_000,
	}
}

// WithDefaults returns l with every zero (or negative) field set to its
// default.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits()
	orDefault(&l.MaxBytes, d.MaxBytes)
	orDefault(&l.MaxYAMLNodes, d.MaxYAMLNodes)
	orDefault(&l.MaxTriggers, d.MaxTriggers)
	orDefault(&l.MaxOffers, d.MaxOffers)
	orDefault(&l.MaxFeatures, d.MaxFeatures)
	orDefault(&l.MaxPolicies, d.MaxPolicies)
	orDefault(&l.MaxExpressions, d.MaxExpressions)
	orDefault(&l.MaxExpressionLength, d.MaxExpressionLength)
	orDefault(&l.MaxExpressionBytes, d.MaxExpressionBytes)
	orDefault(&l.MaxEventCost, d.MaxEventCost)
	orDefault(&l.MaxDecisionCost, d.MaxDecisionCost)
	return l
}

func orDefault(p *int, d int) {
	if *p <= 0 {
		*p = d
	}
}

// maxNesting bounds how deeply list, map and message literals and
// comprehensions (all, exists, map, filter) nest in one expression. CEL's
// type checker takes time that grows with the cube of that depth (a list
// literal nested 100 deep, 213 characters, takes 0.1 s to check, 200 deep
// over a second), so the bound is checked before it runs. Rules nest two
// or three deep; it is not a setting because no rule needs more.
const maxNesting = 8

// LoadOption configures Parse, Load and LoadLive.
type LoadOption func(*loadConfig)

type loadConfig struct {
	limits Limits
}

// WithLimits holds the file to l instead of DefaultLimits (zero fields
// still mean their default).
func WithLimits(l Limits) LoadOption {
	return func(c *loadConfig) { c.limits = l }
}

func newLoadConfig(opts []LoadOption) loadConfig {
	var c loadConfig
	for _, o := range opts {
		o(&c)
	}
	c.limits = c.limits.WithDefaults()
	return c
}

// readBounded reads the file at path, but never more than max+1 bytes:
// one more than the limit tells a file over it, whatever the file is. size
// is the file's size when the file says it (a regular file), else -1.
//
// Opening a FIFO waits for a writer, as any open does; what the writer
// sends is then read up to the same bound.
func readBounded(path string, max int) (data []byte, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, -1, err
	}
	defer f.Close()
	size = -1
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	data, err = readAtMost(f, max)
	if err != nil {
		return nil, -1, err
	}
	return data, size, nil
}

// readAtMost reads r to its end or to max+1 bytes, whichever comes first.
func readAtMost(r io.Reader, max int) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r, int64(max)+1))
}

// checkSize reports a file over the limit. size is what the file says of
// itself, or -1 when only the bytes read are known.
func checkSize(c *collector, data []byte, size int64, l Limits) bool {
	if len(data) <= l.MaxBytes {
		return true
	}
	if size < int64(len(data)) {
		c.add(0, "", "", "", "the file is larger than the limit of %d bytes (max_bytes): reading stopped after %d bytes",
			l.MaxBytes, len(data))
		return false
	}
	c.add(0, "", "", "", "the file is %d bytes, over the limit of %d (max_bytes)", size, l.MaxBytes)
	return false
}
