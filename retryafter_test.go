package limiter

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// raNow is the time the parsing tests read headers at: a whole second, so
// that Unix-second resets give whole waits.
var raNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

const raCap = 5 * time.Minute

// mkHeader builds a header from name, value pairs, canonicalising the names as
// net/http does for a response.
func mkHeader(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestRetryAfter(t *testing.T) {
	date := func(d time.Duration) string { return raNow.Add(d).Format(http.TimeFormat) }
	for _, tc := range []struct {
		name string
		h    http.Header
		want time.Duration
		ok   bool
	}{
		{"seconds", mkHeader("Retry-After", "7"), 7 * time.Second, true},
		{"zero", mkHeader("Retry-After", "0"), 0, true},
		{"blanks", mkHeader("Retry-After", " 12 "), 12 * time.Second, true},
		{"fraction rounds up", mkHeader("Retry-After", "2.128"), 3 * time.Second, true},
		{"zero fraction", mkHeader("Retry-After", "2.000"), 2 * time.Second, true},
		{"leading zeros", mkHeader("Retry-After", "007"), 7 * time.Second, true},
		{"date", mkHeader("Retry-After", date(30*time.Second)), 30 * time.Second, true},
		{"RFC 850 date", mkHeader("Retry-After", raNow.Add(time.Minute).Format(time.RFC850)), time.Minute, true},
		{"ANSI C date", mkHeader("Retry-After", raNow.Add(2*time.Minute).Format(time.ANSIC)), 2 * time.Minute, true},
		{"date in the past", mkHeader("Retry-After", date(-time.Hour)), 0, true},
		{"date past the cap", mkHeader("Retry-After", date(24*time.Hour)), raCap, true},
		{"far date", mkHeader("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT"), raCap, true},
		{"past the cap", mkHeader("Retry-After", "3600"), raCap, true},
		{"huge", mkHeader("Retry-After", "99999999999999999999"), raCap, true},
		{"huge fraction", mkHeader("Retry-After", "9223372036854775807.5"), raCap, true},
		{"ms", mkHeader("Retry-After-Ms", "1500"), 1500 * time.Millisecond, true},
		{"ms fraction", mkHeader("Retry-After-Ms", "0.2"), time.Millisecond, true},
		{"x-ms", mkHeader("X-Ms-Retry-After-Ms", "250"), 250 * time.Millisecond, true},
		{"ms before seconds", mkHeader("Retry-After", "9", "Retry-After-Ms", "1200"), 1200 * time.Millisecond, true},
		{"bad ms, good seconds", mkHeader("Retry-After-Ms", "soon", "Retry-After", "4"), 4 * time.Second, true},
		{"first value", mkHeader("Retry-After", "5", "Retry-After", "50"), 5 * time.Second, true},
		{"missing", mkHeader(), 0, false},
		{"empty", mkHeader("Retry-After", ""), 0, false},
		{"negative", mkHeader("Retry-After", "-1"), 0, false},
		{"plus", mkHeader("Retry-After", "+5"), 0, false},
		{"exponent", mkHeader("Retry-After", "1e309"), 0, false},
		{"NaN", mkHeader("Retry-After", "NaN"), 0, false},
		{"Inf", mkHeader("Retry-After", "Inf"), 0, false},
		{"dot only", mkHeader("Retry-After", "."), 0, false},
		{"trailing dot", mkHeader("Retry-After", "5."), 0, false},
		{"leading dot", mkHeader("Retry-After", ".5"), 0, false},
		{"unit", mkHeader("Retry-After", "5s"), 0, false},
		{"hex", mkHeader("Retry-After", "0x10"), 0, false},
		{"two numbers", mkHeader("Retry-After", "5 6"), 0, false},
		{"garbage date", mkHeader("Retry-After", "Mon, 99 Foo 2026 25:61:61 GMT"), 0, false},
		{"negative ms", mkHeader("X-Ms-Retry-After-Ms", "-100"), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := retryAfter(tc.h, raNow, raCap)
			assert.Equal(t, tc.ok, ok)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestQuotaReset(t *testing.T) {
	unix := func(d time.Duration) string { return strconv.FormatInt(raNow.Add(d).Unix(), 10) }
	unixMs := func(d time.Duration) string { return strconv.FormatInt(raNow.Add(d).UnixMilli(), 10) }
	for _, tc := range []struct {
		name string
		h    http.Header
		want time.Duration
		ok   bool
	}{
		{"draft structured", mkHeader("RateLimit", `"default";r=0;t=20`, "RateLimit-Policy", `"default";q=100;w=60`), 20 * time.Second, true},
		{"draft structured, some left", mkHeader("RateLimit", `"default";r=5;t=20`), 0, false},
		{"draft structured, no t: policy window", mkHeader("RateLimit", `"default";r=0`, "RateLimit-Policy", `"burst";q=10;w=1, "default";q=100;w=60`), time.Minute, true},
		{"draft structured, no t, no policy", mkHeader("RateLimit", `"default";r=0`), 0, false},
		{"draft structured, two policies", mkHeader("RateLimit", `"burst";r=0;t=5, "daily";r=0;t=90`), 90 * time.Second, true},
		{"draft structured, spent and not", mkHeader("RateLimit", `"burst";r=0;t=5, "daily";r=7;t=90`), 5 * time.Second, true},
		{"draft structured, two lines", mkHeader("RateLimit", `"burst";r=3;t=5`, "RateLimit", `"daily";r=0;t=40`), 40 * time.Second, true},
		{"draft structured, spaces", mkHeader("RateLimit", ` "default" ; r=0 ; t=20 `), 20 * time.Second, true},
		{"draft structured, token name", mkHeader("RateLimit", `default;r=0;t=20`), 20 * time.Second, true},
		{"draft structured, past the cap", mkHeader("RateLimit", `"day";r=0;t=86400`), raCap, true},
		{"draft structured, bad t", mkHeader("RateLimit", `"d";r=0;t=-3`), 0, false},
		{"draft dictionary", mkHeader("RateLimit", "limit=100, remaining=0, reset=20"), 20 * time.Second, true},
		{"draft dictionary, some left", mkHeader("RateLimit", "limit=100, remaining=1, reset=20"), 0, false},
		{"older draft", mkHeader("RateLimit-Remaining", "0", "RateLimit-Reset", "20", "RateLimit-Limit", "100"), 20 * time.Second, true},
		{"older draft, some left", mkHeader("RateLimit-Remaining", "3", "RateLimit-Reset", "20"), 0, false},
		{"older draft, no reset", mkHeader("RateLimit-Remaining", "0"), 0, false},
		{"X- delta seconds", mkHeader("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "15"), 15 * time.Second, true},
		{"X- Unix seconds", mkHeader("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", unix(45*time.Second)), 45 * time.Second, true},
		{"X- Unix seconds, fraction", mkHeader("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", unix(45*time.Second)+".25"), 46 * time.Second, true},
		{"X- Unix milliseconds", mkHeader("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", unixMs(1500*time.Millisecond)), 1500 * time.Millisecond, true},
		{"X- Unix seconds past", mkHeader("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", unix(-time.Hour)), 0, true},
		{"X- Unix seconds far", mkHeader("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "99999999999999999999"), raCap, true},
		{"X- some left", mkHeader("X-RateLimit-Remaining", "1", "X-RateLimit-Reset", "15"), 0, false},
		{"X- remaining 0.0", mkHeader("X-RateLimit-Remaining", "0.0", "X-RateLimit-Reset", "15"), 15 * time.Second, true},
		{"X- remaining negative", mkHeader("X-RateLimit-Remaining", "-1", "X-RateLimit-Reset", "15"), 0, false},
		{"X- bad reset", mkHeader("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "NaN"), 0, false},
		{"longest of the forms", mkHeader("RateLimit", `"d";r=0;t=20`, "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "30"), 30 * time.Second, true},
		{"none", mkHeader("Content-Type", "text/plain"), 0, false},
		{"garbage", mkHeader("RateLimit", `"`, "RateLimit-Policy", `;;,,"`), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := quotaReset(tc.h, raNow, raCap)
			assert.Equal(t, tc.ok, ok)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestBackoff(t *testing.T) {
	for attempt, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		for range 100 {
			d := retryBackoff(attempt, raCap)
			assert.GreaterOrEqual(t, d, want/2, "attempt %d", attempt)
			assert.LessOrEqual(t, d, want, "attempt %d", attempt)
		}
	}
	for _, attempt := range []int{6, 7, 8, 63, 64, 1 << 30} {
		d := retryBackoff(attempt, raCap)
		assert.GreaterOrEqual(t, d, backoffMax/2, "attempt %d", attempt)
		assert.LessOrEqual(t, d, backoffMax, "attempt %d", attempt)
	}
	assert.LessOrEqual(t, retryBackoff(5, 3*time.Second), 3*time.Second, "capped by MaxRetryAfter")
	assert.Equal(t, time.Duration(0), retryBackoff(0, 0))
}

var raSeeds = []string{
	"", "0", "7", "2.128", "-1", "+1", "1e309", "NaN", "Inf", "99999999999999999999",
	"9223372036854775807", "9223372036854775808.9", ".", "1.", ".5", " 3 ",
	"Wed, 25 Nov 2026 12:00:30 GMT", "Wednesday, 25-Nov-26 12:00:30 GMT",
	"Wed Nov 25 12:00:30 2026", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
	`"default";r=0;t=20`, `"default";q=100;w=60`, "limit=100, remaining=0, reset=20",
	`"a";r=0, "b";r=0;t=1`, `"`, `"\`, `;;,,=`, "1700000000", "1700000000000", "1000000000000000",
}

// FuzzRetryAfter feeds any value to the Retry-After headers: the parser
// must not panic, and its wait must lie in [0, cap].
func FuzzRetryAfter(f *testing.F) {
	for _, s := range raSeeds {
		f.Add(s, int64(raCap))
	}
	f.Fuzz(func(t *testing.T, v string, capNs int64) {
		limit := time.Duration(capNs)
		if limit < 0 {
			limit = -limit
		}
		if limit < 0 { // MinInt64
			limit = raCap
		}
		for _, k := range []string{hdrRetryAfter, hdrRetryAfterMs, hdrMsRetryAfterMs} {
			d, ok := retryAfter(http.Header{k: {v}}, raNow, limit)
			if d < 0 || d > limit || (!ok && d != 0) {
				t.Fatalf("%s: %q: got %v, %v with cap %v", k, v, d, ok, limit)
			}
		}
		for _, now := range []time.Time{raNow, {}, time.Unix(1<<62, 0)} {
			d, ok := retryAfter(http.Header{hdrRetryAfter: {v}}, now, limit)
			if d < 0 || d > limit || (!ok && d != 0) {
				t.Fatalf("%q at %v: got %v, %v", v, now, d, ok)
			}
		}
	})
}

// FuzzRateLimitHeaders feeds any values to the quota headers: the parser
// must not panic, and its wait must lie in [0, cap].
func FuzzRateLimitHeaders(f *testing.F) {
	for _, s := range raSeeds {
		f.Add(s, s, "0")
	}
	f.Add(`"default";r=0;t=20`, `"default";q=100;w=60`, "0")
	f.Add(`"default";r=0`, `"default";q=100;w=60`, "0")
	f.Fuzz(func(t *testing.T, rl, policy, remaining string) {
		for _, h := range []http.Header{
			{hdrRateLimit: {rl}, hdrRateLimitPolicy: {policy}},
			{hdrRateLimit: {rl, policy}},
			{hdrRateLimitRemain: {remaining}, hdrRateLimitReset: {rl}},
			{hdrXRateLimitRemain: {remaining}, hdrXRateLimitReset: {policy}},
		} {
			for _, now := range []time.Time{raNow, {}, time.Unix(-1<<62, 0)} {
				d, ok := quotaReset(h, now, raCap)
				if d < 0 || d > raCap || (!ok && d != 0) {
					t.Fatalf("%v at %v: got %v, %v", h, now, d, ok)
				}
			}
		}
	})
}

// A hostile RateLimit field of thousands of members must not cost time
// quadratic in its length: only the first maxMembers members are read.
func TestRateLimitMembersBounded(t *testing.T) {
	filler := strings.Repeat(`"a";r=5,`, maxMembers)
	h := http.Header{
		hdrRateLimit:       {filler + `"z";r=0;t=30`},
		hdrRateLimitPolicy: {`"z";q=100;w=60`},
	}
	_, ok := quotaReset(h, raNow, time.Hour)
	assert.False(t, ok, "a member past the first %d is not read", maxMembers)

	h[hdrRateLimit] = []string{`"z";r=0;t=30`}
	d, ok := quotaReset(h, raNow, time.Hour)
	require.True(t, ok)
	assert.Equal(t, 30*time.Second, d)
}

// FuzzQuotaLeft: any header gives a count and a reset that are not
// negative, and reading it never panics.
func FuzzQuotaLeft(f *testing.F) {
	f.Add(`"default";r=7;t=20`, `"default";q=100;w=60`, "5", "1767323045")
	f.Add(`limit=100, remaining=9, reset=4`, ``, "", "")
	f.Add(`"a";r=;t=`, `"a";q=0;w=-1, "b";q=99999999999999;w=1`, "-1", "1e9")
	f.Fuzz(func(t *testing.T, rl, policy, remaining, reset string) {
		h := mkHeader("RateLimit", rl, "RateLimit-Policy", policy, "X-RateLimit-Remaining", remaining, "X-RateLimit-Reset", reset)
		left, d, ok := quotaLeft(h, t0)
		if ok && (left < 0 || d < 0) {
			t.Fatalf("quotaLeft = %d, %v", left, d)
		}
		for _, p := range policies(h[hdrRateLimitPolicy]) {
			if p.q <= 0 || p.w <= 0 {
				t.Fatalf("policy %+v", p)
			}
		}
	})
}
