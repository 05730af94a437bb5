package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/internal/clientflags"
)

// usageError is a flag combination that cannot work: exit status 2.
type usageError = clientflags.UsageError

// connFlags are the flags of the commands that talk to nudged: where it
// is, how long a call may take, and the security flags.
type connFlags struct {
	addr    *string
	timeout *time.Duration
	*clientflags.Flags
}

// addConnFlags adds --addr, --timeout and the security flags to fs. Send
// has no --timeout (it streams): it gives withTimeout false.
func addConnFlags(fs *pflag.FlagSet, withTimeout bool) connFlags {
	// A flag set of their own, to mark them for the help (usage lists
	// them apart); fs shares the flags themselves.
	conn := pflag.NewFlagSet("connection", pflag.ContinueOnError)
	cf := connFlags{
		addr:  conn.String("addr", "127.0.0.1:7070", "nudged address"),
		Flags: clientflags.RegisterPFlags(conn, "command's", os.Getenv),
	}
	if withTimeout {
		cf.timeout = conn.Duration("timeout", 10*time.Second, "call timeout")
	}
	conn.VisitAll(func(f *pflag.Flag) {
		f.Annotations = map[string][]string{connAnnotation: nil}
	})
	fs.AddFlagSet(conn)
	return cf
}

// dial connects to --addr with the security flags.
func (c connFlags) dial() (*client.Client, error) { return c.Dial(*c.addr) }

// call dials nudged and runs fn with a context bounded by --timeout. It
// returns the exit status: 0 when fn succeeds; 1 when it fails, after
// printing "cmd: <the error, described>"; dialFailed's when the dial does.
func (c connFlags) call(cmd string, stderr io.Writer, fn func(ctx context.Context, cc grpc.ClientConnInterface) error) int {
	cl, err := c.dial()
	if err != nil {
		return dialFailed(stderr, cmd, err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *c.timeout)
	defer cancel()
	if err := fn(ctx, cl.Conn()); err != nil {
		fmt.Fprintf(stderr, "%s: %s\n", cmd, c.Describe(err))
		return 1
	}
	return 0
}

// dialFailed reports a dial error of command cmd and returns the exit
// status: 2 for flags that cannot work, 1 otherwise.
func dialFailed(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}
