package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// deadLetterRow is one entry of the dead-letter stream, as nudgectl
// actions dead lists it: whatever reads the stream (Redis, or an admin
// RPC) fills it in.
type deadLetterRow struct {
	ID         string // the entry's id in the dead-letter stream
	Group      string // the consumer group that gave up on the action
	Deliveries int64
	Action     string
	User       string
	Trigger    string
	Channel    string
}

// printDeadLetters prints the dead letters as a table for people.
func printDeadLetters(w io.Writer, rows []deadLetterRow) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "no dead letters")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tGROUP\tDELIVERIES\tACTION\tUSER\tTRIGGER\tCHANNEL")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.ID, orDash(r.Group), r.Deliveries, orDash(r.Action), orDash(r.User), orDash(r.Trigger), orDash(r.Channel))
	}
	_ = tw.Flush()
}

// orDash is s, or "-" for an empty cell (a table keeps its columns).
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
