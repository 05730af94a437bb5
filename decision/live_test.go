package decision_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nudge-dm/nudge/decision"
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

const liveBroken = `version: 1
offers:
  - id: broken
    when: profile.nope()
    template: t
`

func TestLiveReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	offers := func(l *decision.Live) int {
		_, n := l.Rules().Counts()
		return n
	}

	write(liveV1)
	l, err := decision.LoadLive(path)
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
	if changed || !errors.Is(err, decision.ErrInvalidRules) {
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

	if _, err := decision.LoadLive(path); err == nil {
		t.Error("LoadLive of a missing file succeeded")
	}
}

func TestNewLiveIsFixed(t *testing.T) {
	r, err := decision.Parse("inline", []byte(liveV1))
	if err != nil {
		t.Fatal(err)
	}
	l := decision.NewLive(r, "inline")
	if changed, err := l.Reload(); changed || err != nil || l.Rules() != r {
		t.Errorf("fixed rules reloaded: %v, %v", changed, err)
	}
}
