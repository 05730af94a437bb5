package decision

import (
	"errors"
	"math"
	"strconv"
	"time"
)

const day = 24 * time.Hour

var errDuration = errors.New("invalid duration")

// parseDuration reads a rules-file duration: a Go duration (30m, 24h,
// 1h30m) in which d may also be used, for 24 hours (7d, 1d12h, 1.5d). A
// day is always 24 hours: policies count rolling periods, not calendar
// days.
func parseDuration(s string) (time.Duration, error) {
	rest, neg := s, false
	if rest != "" && (rest[0] == '-' || rest[0] == '+') {
		neg = rest[0] == '-'
		rest = rest[1:]
	}
	if rest == "0" {
		return 0, nil
	}
	if rest == "" {
		return 0, errDuration
	}
	var total time.Duration
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] == '.' || '0' <= rest[i] && rest[i] <= '9') {
			i++
		}
		j := i
		for j < len(rest) && rest[j] != '.' && (rest[j] < '0' || rest[j] > '9') {
			j++
		}
		num, unit := rest[:i], rest[i:j]
		rest = rest[j:]
		if num == "" || unit == "" {
			return 0, errDuration
		}
		var d time.Duration
		if unit == "d" {
			f, err := strconv.ParseFloat(num, 64)
			if err != nil { // num is digits and dots: no exponent, inf or nan
				return 0, errDuration
			}
			h := f * float64(day)
			if h >= math.MaxInt64 {
				return 0, errDuration
			}
			d = time.Duration(h)
		} else {
			var err error
			if d, err = time.ParseDuration(num + unit); err != nil {
				return 0, errDuration
			}
		}
		if total > math.MaxInt64-d {
			return 0, errDuration
		}
		total += d
	}
	if neg {
		total = -total
	}
	return total, nil
}
