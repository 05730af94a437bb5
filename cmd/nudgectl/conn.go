package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/nudge-dm/nudge/internal/clientflags"
)

// usageError is a flag combination that cannot work: exit status 2.
type usageError = clientflags.UsageError

// dialFailed reports a dial error of command cmd and returns the exit
// status: 2 for flags that cannot work, 1 otherwise.
func dialFailed(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}
