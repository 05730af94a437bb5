package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/nudge-dm/nudge/decision"
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

func rulesCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nudgectl rules check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print one JSON object per file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "nudgectl rules check: name at least one rules file")
		return 2
	}
	status := 0
	for _, path := range fs.Args() {
		res := checkFile(path)
		if !res.OK {
			status = 1
		}
		if *asJSON {
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

// problems flattens a Load error into one problem per rule error.
func problems(err error) []checkProblem {
	var out []checkProblem
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var re *decision.RuleError
		if errors.As(err, &re) {
			out = append(out, checkProblem{Line: re.Line, Rule: re.Rule, Field: re.Field, Message: re.Error()})
			return
		}
		out = append(out, checkProblem{Message: err.Error()})
	}
	walk(err)
	return out
}

func jsonLine(v any) string {
	b, _ := json.Marshal(v) // maps of strings and numbers cannot fail
	return string(b)
}
