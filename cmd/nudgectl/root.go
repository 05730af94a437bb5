package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nudge-dm/nudge/internal/version"
)

// exitCode is a command's exit status other than 0, returned as an error
// by a command that has already said why on stderr.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// exitWith turns a command body's exit status into its RunE error.
func exitWith(status int) error {
	if status == 0 {
		return nil
	}
	return exitCode(status)
}

// run executes one command line and returns the exit status: 0 success,
// 1 the command's check or call failed, 2 bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	if args == nil {
		args = []string{} // nil makes cobra read os.Args
	}
	root.SetArgs(goStyleLongFlags(root, args))
	cmd, err := root.ExecuteC()
	var code exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	}
	// Anything else is cobra refusing the command line: an unknown
	// command or flag, a bad value, a missing argument.
	fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", cmd.CommandPath(), err, cmd.CommandPath())
	return 2
}

const rootLong = `nudgectl validates and tests rules files offline, and calls nudged: it
replays events, asks for decisions, reads and erases profiles, reads and
exports features for models, follows and consumes actions, manages
consumer groups and measures campaigns.

Security flags of send, decide, profile, features, actions tail, groups and
report, which call nudged (--addr, default 127.0.0.1:7070):
  --token T          bearer token (default: $NUDGE_TOKEN; prefer the variable,
                     a command line is visible to other users)
  --tls              connect with TLS (default: TLS, except to a loopback --addr)
  --ca-file F        PEM CA bundle that verifies nudged (default: system roots; implies --tls)
  --cert-file F --key-file F
                     client certificate for mutual TLS (implies --tls)
  --server-name N    name to verify nudged's certificate against (implies --tls)
  --insecure         plaintext, and allow sending the token so (e.g. to a loopback nudged);
                     without it a token is only sent over TLS

Exit status: 0 success, 1 a failed check or call, 2 bad usage.`

// newRootCmd builds the command tree, writing to stdout and stderr.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "nudgectl",
		Short: "nudge's command-line tool",
		Long:  rootLong,
		// Errors are printed by run, which knows the exit status; a
		// refused call is one line, not followed by the usage.
		SilenceErrors: true,
		SilenceUsage:  true,
		Version:       version.String("nudgectl"),
		RunE:          needsSubcommand,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	// Declared here so that cobra does not add its own, with -v.
	root.Flags().Bool("version", false, "print the module version, VCS revision and Go version")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetUsageFunc(usage)
	root.AddCommand(
		&cobra.Command{
			Use:   "version",
			Short: "Print the module version, VCS revision and Go version (also --version)",
			Args:  cobra.NoArgs,
			Run: func(cmd *cobra.Command, _ []string) {
				fmt.Fprintln(stdout, version.String("nudgectl"))
			},
		},
		parentCmd("rules", "Validate and test rules files offline",
			newRulesCheckCmd(stdout, stderr), newRulesTestCmd(stdout, stderr)),
		parentCmd("decisions", "Follow the decision audit stream",
			newDecisionsTailCmd(stdout, stderr)),
		newSendCmd(stdout, stderr),
		newDecideCmd(stdout, stderr),
		parentCmd("profile", "Read (role admin or console) or erase (role admin) a user's profile",
			newProfileCmd("get", stdout, stderr), newProfileCmd("delete", stdout, stderr)),
		parentCmd("features", "Read or export the rules' features for models (role features, admin or console)",
			newFeaturesGetCmd(stdout, stderr), newFeaturesExportCmd(stdout, stderr)),
		parentCmd("actions", "Follow and consume actions, list dead letters",
			newActionsTailCmd(stdout, stderr), newActionsDeadCmd(stdout, stderr)),
		parentCmd("groups", "List (role admin or console) or delete (role admin) the outbox's consumer groups",
			newGroupsListCmd(stdout, stderr), newGroupsDeleteCmd(stdout, stderr)),
		newReportCmd(stdout, stderr),
	)
	return root
}

// parentCmd is a command that only groups subcommands. Flags given
// without a subcommand (nudgectl groups --addr A) are not what is wrong:
// it says that a subcommand is missing.
func parentCmd(name, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: name, Short: short, RunE: needsSubcommand,
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true}}
	c.AddCommand(subs...)
	return c
}

// needsSubcommand is the RunE of the commands that group others. Without
// it cobra would show their help and exit 0, where nudgectl always said
// that a command line without a command is bad usage (status 2).
func needsSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(cmd.ErrOrStderr(), cmd.UsageString())
		return exitCode(2)
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += " (did you mean " + strings.Join(s, " or ") + "?)"
	}
	return errors.New(msg)
}

// connAnnotation marks the flags of connFlags, listed apart in the help.
const connAnnotation = "nudgectl_connection"

// usage is cobra's usage text with two changes: the commands that only
// group others do not show a usage line of their own, and the flags that
// say how to reach nudged are listed apart from the command's own.
func usage(c *cobra.Command) error {
	var b strings.Builder
	b.WriteString("Usage:")
	if c.Runnable() && !c.HasAvailableSubCommands() {
		b.WriteString("\n  " + c.UseLine())
	}
	if c.HasAvailableSubCommands() {
		b.WriteString("\n  " + c.CommandPath() + " [command]")
	}
	if c.HasExample() {
		b.WriteString("\n\nExamples:\n" + c.Example)
	}
	if c.HasAvailableSubCommands() {
		b.WriteString("\n\nAvailable Commands:")
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() || sub.Name() == "help" {
				fmt.Fprintf(&b, "\n  %-*s %s", sub.NamePadding(), sub.Name(), sub.Short)
			}
		}
	}
	own := pflag.NewFlagSet("own", pflag.ContinueOnError)
	conn := pflag.NewFlagSet("connection", pflag.ContinueOnError)
	c.LocalFlags().VisitAll(func(f *pflag.Flag) {
		if _, ok := f.Annotations[connAnnotation]; ok {
			conn.AddFlag(f)
		} else {
			own.AddFlag(f)
		}
	})
	if own.HasAvailableFlags() {
		b.WriteString("\n\nFlags:\n" + strings.TrimRight(own.FlagUsages(), " \n"))
	}
	if conn.HasAvailableFlags() {
		b.WriteString("\n\nConnection flags (nudgectl help for the rules they follow):\n" + strings.TrimRight(conn.FlagUsages(), " \n"))
	}
	if c.HasAvailableInheritedFlags() {
		b.WriteString("\n\nGlobal Flags:\n" + strings.TrimRight(c.InheritedFlags().FlagUsages(), " \n"))
	}
	if c.HasAvailableSubCommands() {
		fmt.Fprintf(&b, "\n\nUse \"%s [command] --help\" for more information about a command.", c.CommandPath())
	}
	b.WriteString("\n")
	_, err := io.WriteString(c.OutOrStderr(), b.String())
	return err
}

// goStyleLongFlags rewrites -name and -name=value into --name and
// --name=value for the long flags of the tree: nudgectl parsed its flags
// with Go's flag package, which takes one dash as well as two, and
// scripts written for it keep working. Single letters are left alone
// (pflag's shorthands, -n 5), and so is everything after "--".
func goStyleLongFlags(root *cobra.Command, args []string) []string {
	long := map[string]bool{"help": true, "version": true}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { long[f.Name] = len(f.Name) > 1 })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	out := slices.Clone(args)
	for i, a := range out {
		if a == "--" {
			break
		}
		if len(a) < 3 || a[0] != '-' || a[1] == '-' {
			continue
		}
		name, _, _ := strings.Cut(a[1:], "=")
		if long[name] {
			out[i] = "-" + a
		}
	}
	return out
}
