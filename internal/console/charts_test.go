package console

import (
	"strings"
	"testing"
	"time"
)

func TestNiceCeil(t *testing.T) {
	for _, tc := range []struct{ in, want float64 }{
		{0, 1}, {-3, 1}, {0.7, 1}, {1, 1}, {1.2, 2}, {2.1, 2.5}, {3, 5}, {7, 10}, {12, 20}, {480, 500}, {0.013, 0.02},
	} {
		if got := niceCeil(tc.in); got != tc.want {
			t.Errorf("niceCeil(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestFormatValue(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		unit string
		want string
	}{
		{0.25, "%", "25%"}, {0.125, "%", "12.5%"}, {0, "s", "0 s"}, {0.0004, "s", "400 µs"}, {0.25, "s", "250 ms"}, {3.5, "s", "3.5 s"},
		{1500, "/s", "1.5k /s"}, {12, "actions", "12 actions"}, {2.5e6, "", "2.5M"},
	} {
		if got := formatValue(tc.v, tc.unit); got != tc.want {
			t.Errorf("formatValue(%v, %q) = %q, want %q", tc.v, tc.unit, got, tc.want)
		}
	}
}

func TestLineChart(t *testing.T) {
	now := testNow
	pts := []Point{{At: now.Add(-2 * time.Hour), Value: 99}, {At: now.Add(-30 * time.Minute), Value: 4}, {At: now, Value: 8}}
	svg := string(lineChart("Events", "/s", pts, time.Hour, now))
	for _, want := range []string{"<svg", "minutes ago", "Events", "now 8 /s", "<polyline", "10 /s"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q:\n%s", want, svg)
		}
	}
	// The point older than the window is not drawn: two points only.
	poly := svg[strings.Index(svg, `points="`)+8:]
	poly = poly[:strings.Index(poly, `"`)]
	if n := len(strings.Fields(poly)); n != 2 {
		t.Errorf("%d points drawn, want 2: %q", n, poly)
	}
	if empty := string(lineChart("Events", "/s", nil, time.Hour, now)); !strings.Contains(empty, "no rate yet") {
		t.Errorf("empty chart: %s", empty)
	}
}

func TestChartsEscapeText(t *testing.T) {
	bad := `<script>alert(1)</script>`
	for name, svg := range map[string]string{
		"bars":     string(barChart(bad, "x", []bar{{Label: bad, Value: 1}})),
		"timeline": string(timeline([]mark{{At: testNow, Label: bad, Class: bad}}, testNow)),
		"line":     string(lineChart(bad, "/s", nil, time.Hour, testNow)),
	} {
		if strings.Contains(svg, "<script>") {
			t.Errorf("%s: markup of a label went through:\n%s", name, svg)
		}
	}
}

func TestLiftBar(t *testing.T) {
	s := newLiftScale([2]float64{-0.2, 0.5}, [2]float64{0.1, 0.9})
	if s.Lo > -0.2 || s.Hi < 0.9 {
		t.Fatalf("scale %+v does not span the intervals", s)
	}
	if win := string(liftBar(s, 0.4, 0.1, 0.9)); !strings.Contains(win, `class="ci win"`) || !strings.Contains(win, "lift 40.0%") {
		t.Errorf("significant gain: %s", win)
	}
	if flat := string(liftBar(s, 0.1, -0.2, 0.5)); strings.Contains(flat, "win") || strings.Contains(flat, "loss") {
		t.Errorf("an interval across zero is neither: %s", flat)
	}
	if loss := string(liftBar(s, -0.15, -0.19, -0.1)); !strings.Contains(loss, `class="ci loss"`) {
		t.Errorf("significant loss: %s", loss)
	}
	if axis := string(liftAxis(s)); !strings.Contains(axis, "lift (%), 95% interval") || !strings.Contains(axis, "0.0%") {
		t.Errorf("axis: %s", axis)
	}
}

func TestRelTime(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{30 * time.Second, "30s ago"}, {40 * time.Minute, "40m ago"}, {5 * time.Hour, "5h ago"}, {72 * time.Hour, "3d ago"}, {-3 * time.Hour, "in 3h"},
	} {
		if got := relTime(testNow.Add(-tc.d), testNow); got != tc.want {
			t.Errorf("relTime(-%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestLinesChart(t *testing.T) {
	now := testNow
	svg := string(linesChart("Decisions by verdict", "/s", []line{
		{Label: "send", Class: "v-send", Points: []Point{{At: now.Add(-time.Minute), Value: 3}, {At: now, Value: 4}}},
		{Label: "hold", Class: "v-hold", Points: []Point{{At: now, Value: 1}}},
		{Label: "none", Class: "v-none"},
	}, time.Hour, now))
	for _, want := range []string{"send 4 /s", "hold 1 /s", "none no data yet", `class="series v-send"`, `class="last v-hold"`, "5 /s"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q:\n%s", want, svg)
		}
	}
	if n := strings.Count(svg, "<polyline"); n != 2 {
		t.Errorf("%d lines drawn, want 2 (none has no points)", n)
	}
}
