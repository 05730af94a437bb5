package daytime

import (
	"testing"
	"time"

	"github.com/nudge-dm/nudge/decision"
)

func TestZoneIsDaytimeAtEveryHour(t *testing.T) {
	day := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	for m := 0; m < 24*60; m += 10 {
		now := day.Add(time.Duration(m) * time.Minute)
		loc, err := time.LoadLocation(Zone(now))
		if err != nil {
			t.Fatal(err)
		}
		if h := now.In(loc).Hour(); h < 11 || h > 13 {
			t.Errorf("at %s UTC, %s has %02d h", now.Format("15:04"), Zone(now), h)
		}
	}
}

func TestRulesParse(t *testing.T) {
	now := time.Date(2026, 12, 3, 22, 30, 0, 0, time.UTC)
	if _, err := decision.Parse("daytime.yaml", Rules(now)); err != nil {
		t.Fatal(err)
	}
}
