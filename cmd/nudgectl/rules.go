package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/internal/rulestest"
)

// checkResult is one file's outcome, as printed by --json.
type checkResult struct {
	File     string         `json:"file"`
	OK       bool           `json:"ok"`
	Version  string         `json:"version,omitempty"`
	Triggers int            `json:"triggers"`
	Offers   int            `json:"offers"`
	Errors   []checkProblem `json:"errors,omitempty"`
}

type checkProblem struct {
	Line    int    `json:"line,omitempty"`
	Rule    string `json:"rule,omitempty"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func newRulesCheckCmd(stdout, _ io.Writer) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check FILE...",
		Short: "Validate rules files offline with the server's compiler",
		Long: `Validates rules files offline with the server's own compiler. A valid
file prints a line with its counts and version; errors print one a line as
FILE:LINE: trigger|offer "ID": FIELD: problem, and the exit status is 1.`,
		Example: "  nudgectl rules check examples/rules.yaml",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("name at least one rules file")
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			return exitWith(rulesCheck(args, asJSON, stdout))
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per file")
	return cmd
}

func rulesCheck(files []string, asJSON bool, stdout io.Writer) int {
	status := 0
	for _, path := range files {
		res := checkFile(path)
		if !res.OK {
			status = 1
		}
		if asJSON {
			b, _ := json.Marshal(res) // plain structs cannot fail
			fmt.Fprintln(stdout, string(b))
			continue
		}
		if res.OK {
			fmt.Fprintf(stdout, "%s: ok: %d triggers, %d offers, version %s\n", path, res.Triggers, res.Offers, res.Version)
			continue
		}
		for _, p := range res.Errors {
			fmt.Fprintln(stdout, p.Message)
		}
	}
	return status
}

func checkFile(path string) checkResult {
	res := checkResult{File: path}
	r, err := decision.Load(path)
	if err != nil {
		res.Errors = problems(err)
		return res
	}
	res.OK = true
	res.Version = r.Version()
	res.Triggers, res.Offers = r.Counts()
	return res
}

// problems flattens a Load error into one problem per rule error
// (rulestest.Problems, which TestRules answers with too).
func problems(err error) []checkProblem {
	var out []checkProblem
	for _, p := range rulestest.Problems(err) {
		out = append(out, checkProblem{Line: p.Line, Rule: p.Rule, Field: p.Field, Message: p.Text})
	}
	return out
}

func jsonLine(v any) string {
	b, _ := json.Marshal(v) // maps of strings and numbers cannot fail
	return string(b)
}
