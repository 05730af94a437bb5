package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFormat(t *testing.T) {
	tests := []struct {
		name     string
		settings []debug.BuildSetting
		want     string
	}{
		{"stamped", []debug.BuildSetting{
			{Key: "vcs.revision", Value: "55735f4abc"}, {Key: "vcs.time", Value: "2026-12-07T10:39:37Z"}, {Key: "vcs.modified", Value: "false"},
		}, "nudged v1.2.3, revision 55735f4abc, committed 2026-12-07T10:39:37Z, go1.26.8"},
		{"local changes", []debug.BuildSetting{
			{Key: "vcs.revision", Value: "55735f4abc"}, {Key: "vcs.modified", Value: "true"},
		}, "nudged v1.2.3, revision 55735f4abc with local changes, go1.26.8"},
		{"not stamped", nil, "nudged v1.2.3, revision unknown (built without VCS stamping), go1.26.8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: tt.settings}
			if got := format("nudged", bi); got != tt.want {
				t.Fatalf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// A test binary has build information too.
func TestString(t *testing.T) {
	if got := String("prog"); !strings.HasPrefix(got, "prog ") || !strings.Contains(got, "go1.") {
		t.Fatalf("String = %q", got)
	}
}
