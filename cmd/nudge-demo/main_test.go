package main

import (
	"testing"
	"time"
)

// Whatever the hour the demo runs, its shopper lives where it is daytime,
// outside the bundled rules' quiet hours, so the coupon is sent at once.
func TestDaytimeZoneAtEveryHour(t *testing.T) {
	for _, day := range []time.Time{time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC), time.Date(2026, 7, 15, 0, 0, 0, 0, time.UTC)} {
		for m := 0; m < 24*60; m += 15 {
			now := day.Add(time.Duration(m) * time.Minute)
			z := daytimeZone(now)
			loc, err := time.LoadLocation(z)
			if err != nil {
				t.Fatal(err)
			}
			if h := now.In(loc).Hour(); h < 9 || h >= 20 {
				t.Errorf("at %s UTC: %s, where it is %s", now.Format("2006-01-02 15:04"), z, now.In(loc).Format("15:04"))
			}
		}
	}
}
