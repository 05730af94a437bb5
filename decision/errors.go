package decision

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrInvalidRules is the sentinel every rules-file problem wraps: check for
// it with errors.Is. The individual problems are *RuleError values (use
// errors.As, or walk the joined error to list them all).
var ErrInvalidRules = errors.New("decision: invalid rules")

// RuleError is one problem in a rules file, located precisely enough for a
// rule author to fix it without guessing.
type RuleError struct {
	// File is the name given to Parse (the path for Load).
	File string
	// Line is the 1-based line in File, or 0 when unknown (for instance a
	// YAML syntax error, whose message carries its own line).
	Line int
	// Kind is "trigger", "step", "offer", "feature", "frequency_cap",
	// "quiet_hours", "purchase_cooldown" or "fallback", or "" for
	// file-level problems (including settings).
	Kind string
	// Rule is the id of the rule (the channel, for a fallback; the name,
	// for a feature), or "" when the problem is not inside a rule or the
	// rule has no valid id.
	Rule string
	// Field is the rule field at fault, e.g. "when", "action.channel",
	// "payload_expr.category" or "expr" (a feature's); "" when the problem
	// is the rule as a whole.
	Field string
	// Msg says what is wrong.
	Msg string
}

// Error formats the problem as file:line: kind "id": field: message.
func (e *RuleError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Kind != "" {
		b.WriteString(e.Kind)
		if e.Rule != "" {
			b.WriteByte(' ')
			b.WriteString(strconv.Quote(e.Rule))
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap makes every RuleError match ErrInvalidRules.
func (e *RuleError) Unwrap() error { return ErrInvalidRules }

// EvalError is a rule expression that failed at evaluation time (a missing
// map key, a failed conversion, the cost limit). It never panics and never
// aborts a batch: the trigger does not fire, or the offer is skipped.
type EvalError struct {
	// Kind is "trigger" or "offer".
	Kind string
	// Rule is the id of the rule.
	Rule string
	// Field is the expression that failed, named as in RuleError: "when",
	// "cooldown_by", "action.payload_expr.<key>" (triggers) or
	// "payload_expr.<key>" (offers).
	Field string
	// UserID and EventID identify the event being evaluated (triggers only).
	UserID, EventID string
	// Err is the CEL evaluation error.
	Err error
}

func (e *EvalError) Error() string {
	return fmt.Sprintf("%s %q: %s: %v", e.Kind, e.Rule, e.Field, e.Err)
}

func (e *EvalError) Unwrap() error { return e.Err }

// maxReportedErrors bounds how many problems one Parse reports, so a
// pathological file cannot produce an unbounded error.
const maxReportedErrors = 50

// collector gathers the problems of one file.
type collector struct {
	file    string
	errs    []*RuleError
	dropped int
}

func (c *collector) add(line int, kind, rule, field, format string, args ...any) {
	if len(c.errs) >= maxReportedErrors {
		c.dropped++
		return
	}
	msg := format
	if len(args) > 0 {
		msg = fmt.Sprintf(format, args...)
	}
	c.errs = append(c.errs, &RuleError{File: c.file, Line: line, Kind: kind, Rule: rule, Field: field, Msg: msg})
}

// full says whether further problems would only be counted.
func (c *collector) full() bool { return len(c.errs) >= maxReportedErrors }

func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	// Structure is read before expressions are compiled; report in file
	// order, as an author reads.
	slices.SortStableFunc(c.errs, func(a, b *RuleError) int { return cmp.Compare(a.Line, b.Line) })
	errs := make([]error, len(c.errs), len(c.errs)+1)
	for i, e := range c.errs {
		errs[i] = e
	}
	if c.dropped > 0 {
		errs = append(errs, &RuleError{File: c.file, Msg: fmt.Sprintf("%d more problems not shown", c.dropped)})
	}
	return errors.Join(errs...)
}
