package decision

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

const liveV1 = `version: 1
offers:
  - id: first
    template: t1
`

const liveV2 = `version: 1
offers:
  - id: second
    template: t2
  - id: third
    template: t3
`

// liveBroken has a CEL error on line 4.
const liveBroken = `version: 1
offers:
  - id: broken
    when: profile.nope()
    template: t
`

// liveBrokenYAML does not parse as YAML.
const liveBrokenYAML = "offers: [unclosed\n"

func TestLiveReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	offers := func(l *Live) int {
		_, n := l.Rules().Counts()
		return n
	}

	write(liveV1)
	l, err := LoadLive(path)
	if err != nil {
		t.Fatal(err)
	}
	v1 := l.Rules().Version()
	if offers(l) != 1 {
		t.Fatalf("offers = %d, want 1", offers(l))
	}

	if changed, err := l.Reload(); changed || err != nil {
		t.Errorf("Reload of an unchanged file = %v, %v; want false, nil", changed, err)
	}

	write(liveV2)
	if changed, err := l.Reload(); !changed || err != nil {
		t.Fatalf("Reload of a changed file = %v, %v; want true, nil", changed, err)
	}
	if offers(l) != 2 || l.Rules().Version() == v1 {
		t.Errorf("after reload: %d offers, version %s (was %s)", offers(l), l.Rules().Version(), v1)
	}

	v2 := l.Rules().Version()
	write(liveBroken)
	changed, err := l.Reload()
	if changed || !errors.Is(err, ErrInvalidRules) {
		t.Errorf("Reload of a broken file = %v, %v; want false and ErrInvalidRules", changed, err)
	}
	if l.Rules().Version() != v2 || offers(l) != 2 {
		t.Errorf("a broken file replaced the rules in force")
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Reload(); err == nil || l.Rules().Version() != v2 {
		t.Errorf("Reload of a missing file = %v; the old rules must stay", err)
	}

	if _, err := LoadLive(path); err == nil {
		t.Error("LoadLive of a missing file succeeded")
	}
}

// TestLiveRefusal walks a rules file through good, broken, restored and
// missing states. After each step a second reload of the same file must be
// no news (Watch would not report it) and give the same answer: a refused
// file is reported once, yet an explicit Reload still returns its error.
func TestLiveRefusal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(liveV1), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := LoadLive(path)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := l.Refused(); ok {
		t.Fatalf("Refused after LoadLive = %+v, want none", r)
	}
	v1, v2 := contentVersion([]byte(liveV1)), contentVersion([]byte(liveV2))

	const missing = "" // content of a step that removes the file
	steps := []struct {
		name    string
		content string
		changed bool
		news    bool
		wantErr error  // nil: no error
		errText string // in the error and Refused().Err, when wantErr is set
		version string // of the rules in force after the step
		refused string // Refused().Version; "-": no refusal
	}{
		{name: "unchanged good file", content: liveV1, version: v1, refused: "-"},
		{name: "broken file", content: liveBroken, news: true, wantErr: ErrInvalidRules,
			errText: path + `:4: offer "broken": when:`, version: v1, refused: contentVersion([]byte(liveBroken))},
		{name: "the file in force is back", content: liveV1, version: v1, refused: "-"},
		{name: "the same broken file after a clear is news again", content: liveBroken, news: true, wantErr: ErrInvalidRules,
			errText: path + ":4:", version: v1, refused: contentVersion([]byte(liveBroken))},
		{name: "another broken file", content: liveBrokenYAML, news: true, wantErr: ErrInvalidRules,
			errText: "yaml: line 1", version: v1, refused: contentVersion([]byte(liveBrokenYAML))},
		{name: "a new good file", content: liveV2, changed: true, news: true, version: v2, refused: "-"},
		{name: "missing file", content: missing, news: true, wantErr: fs.ErrNotExist,
			errText: "read rules: open " + path, version: v2, refused: ""},
		{name: "broken file after a missing one", content: liveBroken, news: true, wantErr: ErrInvalidRules,
			errText: path + ":4:", version: v2, refused: contentVersion([]byte(liveBroken))},
		{name: "missing again", content: missing, news: true, wantErr: fs.ErrNotExist,
			errText: "read rules: open " + path, version: v2, refused: ""},
		{name: "good file back after a missing one", content: liveV2, version: v2, refused: "-"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.content == missing {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(path, []byte(st.content), 0o644); err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			changed, news, err := l.reload()
			after := time.Now()
			if changed != st.changed || news != st.news {
				t.Errorf("reload: changed %v, news %v; want %v, %v", changed, news, st.changed, st.news)
			}
			checkErr := func(what string, err error) {
				t.Helper()
				switch {
				case st.wantErr == nil && err != nil:
					t.Errorf("%s: %v, want no error", what, err)
				case st.wantErr != nil && (!errors.Is(err, st.wantErr) || !strings.Contains(err.Error(), st.errText)):
					t.Errorf("%s: %v, want %v containing %q", what, err, st.wantErr, st.errText)
				}
			}
			checkErr("reload", err)
			if got := l.Rules().Version(); got != st.version {
				t.Errorf("version in force %s, want %s", got, st.version)
			}
			ref, ok := l.Refused()
			switch {
			case st.refused == "-" && ok:
				t.Errorf("Refused = %+v, want none", ref)
			case st.refused != "-" && !ok:
				t.Errorf("no refusal, want one of version %q", st.refused)
			case ok:
				if ref.Version != st.refused {
					t.Errorf("Refused().Version %q, want %q", ref.Version, st.refused)
				}
				if ref.At.Before(before) || ref.At.After(after) {
					t.Errorf("Refused().At %v, want the time of this reload [%v, %v]", ref.At, before, after)
				}
				if ref.Err != err {
					t.Errorf("Refused().Err %v, want the error reload returned, %v", ref.Err, err)
				}
			}

			// The same file again, through the exported Reload: no change,
			// the same refusal (not parsed again: the very same error, the
			// same time), and no news for Watch.
			changed, err = l.Reload()
			if changed {
				t.Error("a second Reload of the same file changed the rules")
			}
			checkErr("second Reload", err)
			if _, news, _ := l.reload(); news {
				t.Error("a second reload of the same file is news: Watch would report it again")
			}
			again, againOK := l.Refused()
			if againOK != ok || again.Version != ref.Version || !again.At.Equal(ref.At) || again.Err != ref.Err {
				t.Errorf("Refused after a second Reload = %+v, %v; want %+v, %v", again, againOK, ref, ok)
			}
		})
	}
}

// TestLiveRefusedVersion: a refused file's version is the one Parse would
// give the same bytes, so GetRules's two versions compare.
func TestLiveRefusedVersion(t *testing.T) {
	for _, src := range []string{liveV1, liveV2} {
		if got, want := contentVersion([]byte(src)), mustParse(t, src).Version(); got != want {
			t.Errorf("contentVersion = %s, Parse's version %s", got, want)
		}
	}
}

// TestLiveWatchReportsOnce: Watch reports a refused file once, however long
// it stays on disk, then the next change. Files are replaced by rename so a
// poll never reads half a file.
func TestLiveWatchReportsOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	write := func(s string) {
		t.Helper()
		tmp := filepath.Join(dir, "next.yaml")
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(liveV1)
	l, err := LoadLive(path)
	if err != nil {
		t.Fatal(err)
	}

	type report struct {
		changed bool
		err     error
	}
	reports := make(chan report)
	ctx, cancel := context.WithCancel(t.Context())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		// 1ms: hundreds of polls of the same refused file while the test
		// waits for the next report.
		l.Watch(ctx, time.Millisecond, func(changed bool, err error) {
			select {
			case reports <- report{changed, err}:
			case <-ctx.Done():
			}
		})
	}()
	defer func() {
		cancel()
		<-stopped
	}()
	next := func() report {
		t.Helper()
		select {
		case r := <-reports:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no report from Watch within 10s")
			return report{}
		}
	}

	write(liveBroken)
	if r := next(); r.changed || !errors.Is(r.err, ErrInvalidRules) {
		t.Fatalf("report after a broken file = %+v, want the refusal", r)
	}
	write(liveV2)
	if r := next(); !r.changed || r.err != nil {
		t.Fatalf("report after a good file = %+v, want the change alone: the refused file was reported again", r)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if r := next(); r.changed || !errors.Is(r.err, fs.ErrNotExist) {
		t.Fatalf("report after the file went missing = %+v, want the read error", r)
	}
	write(liveV2) // the file in force is back: clears the refusal, no report
	write(liveV1)
	if r := next(); !r.changed || r.err != nil {
		t.Fatalf("report after a good file = %+v, want the change alone", r)
	}
	if _, ok := l.Refused(); ok {
		t.Error("a refusal outlived the good file")
	}
}

func TestNewLiveIsFixed(t *testing.T) {
	r, err := Parse("inline", []byte(liveV1))
	if err != nil {
		t.Fatal(err)
	}
	l := NewLive(r, "inline")
	if changed, err := l.Reload(); changed || err != nil || l.Rules() != r {
		t.Errorf("fixed rules reloaded: %v, %v", changed, err)
	}
	if ref, ok := l.Refused(); ok {
		t.Errorf("fixed rules refused %+v", ref)
	}
}

// TestReloadPacer: a reload rests as long as it compiled, once it has
// compiled for reloadSlice, so it takes about half of one CPU.
func TestReloadPacer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &pacer{since: time.Now()}
		time.Sleep(reloadSlice / 2) // compiling, under the slice
		start := time.Now()
		p.pace()
		if rested := time.Since(start); rested != 0 {
			t.Errorf("rested %v under the slice", rested)
		}
		time.Sleep(reloadSlice) // compiling: 1.5 slices since the last rest
		start = time.Now()
		p.pace()
		if rested := time.Since(start); rested != reloadSlice*3/2 {
			t.Errorf("rested %v after compiling 1.5 slices, want %v", rested, reloadSlice*3/2)
		}
		start = time.Now()
		p.pace()
		if rested := time.Since(start); rested != 0 {
			t.Errorf("rested %v right after resting", rested)
		}
	})
}
