// Package daytime gives tests the bundled example rules (examples/rules.yaml)
// in a time zone where it is daytime now. The example rules hold SMS and
// push during 21:00-08:00 in the users' zone (Europe/Paris by default), so
// a test that expects an action at wall-clock time would otherwise pass or
// fail by the hour it runs.
package daytime

import (
	"bytes"
	"fmt"
	"time"

	"github.com/nudge-dm/nudge/examples"
)

// Zone returns a fixed-offset IANA zone in which it is about noon at now.
func Zone(now time.Time) string {
	off := 12 - now.UTC().Hour() // in [-11, 12]
	switch {
	case off > 0:
		return fmt.Sprintf("Etc/GMT-%d", off) // Etc signs are inverted: GMT-3 is UTC+3
	case off < 0:
		return fmt.Sprintf("Etc/GMT+%d", -off)
	}
	return "Etc/UTC"
}

// exampleZone is the default time zone line of the example rules.
const exampleZone = "default_timezone: Europe/Paris"

// Rules returns the example rules with Zone(now) as their default time
// zone: users without a tz attribute are in daytime. It panics if the
// example rules no longer set Europe/Paris (then this package must
// follow them).
func Rules(now time.Time) []byte {
	if bytes.Count(examples.Rules, []byte(exampleZone)) != 1 {
		panic("daytime: examples/rules.yaml no longer has exactly one " + exampleZone)
	}
	return bytes.Replace(examples.Rules, []byte(exampleZone), []byte("default_timezone: "+Zone(now)), 1)
}
