// Package version describes the running binary from what the Go toolchain
// stamps into it (runtime/debug.ReadBuildInfo): the main module's version,
// the VCS revision and the time of its commit, whether the tree had local
// changes, and the Go version. The binaries print it for --version. It
// holds no state; a binary built without VCS stamping (go build
// -buildvcs=false, or outside a repository) says so.
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// String is the one-line description of the running binary named program.
func String(program string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return program + " (no build information)"
	}
	return format(program, bi)
}

// format describes the binary program from its build information.
func format(program string, bi *debug.BuildInfo) string {
	settings := make(map[string]string)
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", program, bi.Main.Version)
	if rev := settings["vcs.revision"]; rev != "" {
		fmt.Fprintf(&b, ", revision %s", rev)
		if settings["vcs.modified"] == "true" {
			b.WriteString(" with local changes")
		}
		if at := settings["vcs.time"]; at != "" {
			fmt.Fprintf(&b, ", committed %s", at)
		}
	} else {
		b.WriteString(", revision unknown (built without VCS stamping)")
	}
	fmt.Fprintf(&b, ", %s", bi.GoVersion)
	return b.String()
}
