package profile_test

import (
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

func TestExposeAndConvert(t *testing.T) {
	const week = 7 * 24 * time.Hour
	t0 := time.Date(2026, 1, 5, 10, 0, 0, 0, time.UTC)
	p := &profile.Profile{}
	m, ok := p.Expose("c", profile.Treated, t0, week)
	if !ok || m != (profile.Measure{Campaign: "c", Variant: profile.Treated, Exposed: 1}) {
		t.Fatalf("first exposure: %+v %v", m, ok)
	}
	if _, ok := p.Expose("c", profile.Treated, t0.Add(time.Hour), week); ok {
		t.Error("a second exposure within the window counted")
	}
	if _, ok := p.Expose("c", profile.Treated, t0.Add(-time.Hour), week); ok {
		t.Error("an earlier exposure within a window of the first counted")
	}
	if got := p.Convert(t0, 9, week, 16); len(got) != 0 {
		t.Errorf("a conversion at the exposure's time converted: %v", got)
	}
	got := p.Convert(t0.Add(time.Minute), 10, week, 16)
	if len(got) != 1 || got[0] != (profile.Measure{Campaign: "c", Variant: profile.Treated, Converted: 1, Value: 10}) {
		t.Fatalf("conversion: %+v", got)
	}
	if got := p.Convert(t0.Add(2*time.Minute), 10, week, 16); len(got) != 0 {
		t.Errorf("a second conversion in the window counted: %v", got)
	}
	// A new window once the first has closed; the kept conversions are
	// before it.
	m, ok = p.Expose("c", profile.Control, t0.Add(week), week)
	if !ok || m.Converted != 0 || m.Variant != profile.Control {
		t.Errorf("exposure after the window: %+v %v", m, ok)
	}
	// Another campaign exposed before kept conversions converts at once.
	m, ok = p.Expose("d", profile.Treated, t0.Add(30*time.Second), week)
	if !ok || m.Converted != 1 || m.Value != 10 {
		t.Errorf("exposure before a kept conversion: %+v %v", m, ok)
	}
	if len(p.Conversions) != 3 {
		t.Errorf("%d conversions kept, want 3", len(p.Conversions))
	}
	// At most max conversions are kept, the latest.
	for i := range 5 {
		p.Convert(t0.Add(time.Duration(i)*time.Hour), 1, week, 2)
	}
	if len(p.Conversions) != 2 || !p.Conversions[1].At.Equal(t0.Add(4*time.Hour)) {
		t.Errorf("conversions %v", p.Conversions)
	}
}

func TestCompactMeasures(t *testing.T) {
	const week = 7 * 24 * time.Hour
	now := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	l := profile.Limits{MaxExposures: 2}.WithDefaults()
	p := &profile.Profile{
		Exposures: []profile.Exposure{
			{Campaign: "closed", At: now.Add(-week - l.Retention - time.Minute)},
			{Campaign: "convertible by a late event", At: now.Add(-week - l.Retention + time.Minute)},
			{Campaign: "new", At: now.Add(-time.Hour)},
			{Campaign: "newest", At: now},
		},
		Conversions: []profile.Conversion{{At: now.Add(-l.Retention - time.Minute)}, {At: now.Add(-time.Hour)}},
	}
	p.CompactMeasures(now, week, l)
	if len(p.Exposures) != 2 || p.Exposures[0].Campaign != "new" || p.Exposures[1].Campaign != "newest" {
		t.Errorf("exposures %+v", p.Exposures)
	}
	if len(p.Conversions) != 1 {
		t.Errorf("conversions %+v", p.Conversions)
	}
	p.CompactMeasures(now.Add(365*24*time.Hour), week, l)
	if p.Exposures != nil || p.Conversions != nil {
		t.Errorf("after a year: %+v %+v", p.Exposures, p.Conversions)
	}
}
