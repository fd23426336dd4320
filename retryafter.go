package limiter

import (
	"iter"
	"math"
	"net/http"
	"strings"
	"time"
)

// The header parsers below are pure functions of the header and the
// current time. They read header values only through the canonical keys
// that net/http produces (http.CanonicalHeaderKey), so that looking up a
// header that is absent allocates nothing. Every value they return lies in
// [0, limit]: a number too large for a Duration saturates, as RFC 9111
// section 1.2.2 asks of delta-seconds, and is then capped.

// Canonical keys of the headers the Transport reads.
const (
	hdrRetryAfter       = "Retry-After"
	hdrRetryAfterMs     = "Retry-After-Ms"      // Azure and others: milliseconds
	hdrMsRetryAfterMs   = "X-Ms-Retry-After-Ms" // Azure: milliseconds
	hdrRateLimit        = "Ratelimit"           // IETF draft: "policy";r=0;t=20
	hdrRateLimitPolicy  = "Ratelimit-Policy"    // IETF draft: "policy";q=100;w=60
	hdrRateLimitRemain  = "Ratelimit-Remaining" // older IETF drafts
	hdrRateLimitReset   = "Ratelimit-Reset"
	hdrXRateLimitRemain = "X-Ratelimit-Remaining" // GitHub, Twitter and many more
	hdrXRateLimitReset  = "X-Ratelimit-Reset"
)

const maxDuration = time.Duration(math.MaxInt64)

// maxMembers bounds the members read from the RateLimit and
// RateLimit-Policy fields: servers send a few policies, and a hostile
// field of many thousands must not cost time quadratic in its length.
const maxMembers = 16

// retryAfter returns the wait a throttled response asks for: from
// Retry-After-Ms or X-Ms-Retry-After-Ms in milliseconds, else from
// Retry-After as delta-seconds (a fraction rounds up to the next second) or
// an HTTP-date, which counts from now and gives 0 when it has passed. It
// reports false, and 0, when none of them holds a valid value: a negative
// number, an exponent, NaN or anything else that is not one. A valid value
// past limit gives limit.
func retryAfter(h http.Header, now time.Time, limit time.Duration) (time.Duration, bool) {
	for _, k := range [...]string{hdrRetryAfterMs, hdrMsRetryAfterMs} {
		if v, ok := firstValue(h, k); ok {
			if d, ok := parseDecimal(v, time.Millisecond); ok {
				return min(d, limit), true
			}
		}
	}
	v, ok := firstValue(h, hdrRetryAfter)
	if !ok {
		return 0, false
	}
	if d, ok := parseDecimal(v, time.Second); ok {
		return min(d, limit), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return clampWait(t.Sub(now), limit), true
	}
	return 0, false
}

// quotaReset returns how long to hold calls back when a response's rate
// limit headers say that the server's quota is spent: until the reset they
// name, capped at limit. It reports false when no header says that nothing
// remains or none names when the quota resets. When several forms or
// policies say so, the longest wait wins: the headers only ever tighten.
//
// The forms read are the IETF draft's structured fields
//
//	RateLimit: "default";r=0;t=20
//	RateLimit-Policy: "default";q=100;w=60
//
// where a policy with r=0 and no t waits its policy's window w; the draft
// versions that put limit=, remaining= and reset= in RateLimit; the older
// drafts' RateLimit-Remaining: 0 with RateLimit-Reset in seconds; and
// X-RateLimit-Remaining: 0 with X-RateLimit-Reset. A reset that is a
// number of at least 1e12 is read as Unix milliseconds, of at least 1e9
// as Unix seconds, and below that as seconds from now.
func quotaReset(h http.Header, now time.Time, limit time.Duration) (time.Duration, bool) {
	var wait time.Duration
	found := false
	tighten := func(d time.Duration) {
		d = clampWait(d, limit)
		if !found || d > wait {
			wait, found = d, true
		}
	}
	if vs := h[hdrRateLimit]; len(vs) > 0 {
		if d, ok := structuredReset(vs, h[hdrRateLimitPolicy], now); ok {
			tighten(d)
		}
	}
	for _, pair := range [...][2]string{
		{hdrRateLimitRemain, hdrRateLimitReset},
		{hdrXRateLimitRemain, hdrXRateLimitReset},
	} {
		rem, ok := firstValue(h, pair[0])
		if !ok || !isZero(rem) {
			continue
		}
		if v, ok := firstValue(h, pair[1]); ok {
			if d, ok := resetWait(v, now); ok {
				tighten(d)
			}
		}
	}
	return wait, found
}

// structuredReset reads the RateLimit field, given as its field lines, and
// returns the longest wait of a policy in it that has nothing remaining.
func structuredReset(lines, policies []string, now time.Time) (time.Duration, bool) {
	var wait time.Duration
	found := false
	// The dictionary form of some drafts: limit=100, remaining=0, reset=20.
	dictRemaining, dictReset := "", ""
	for m := range members(lines) {
		if m.name == "" {
			switch m.key {
			case "remaining":
				dictRemaining = m.value
			case "reset":
				dictReset = m.value
			}
			continue
		}
		r, ok := m.param("r")
		if !ok || !isZero(r) {
			continue
		}
		var d time.Duration
		if t, ok := m.param("t"); ok {
			if d, ok = parseDecimal(t, time.Second); !ok {
				continue
			}
		} else if w, ok := policyWindow(policies, m.name); ok {
			d = w
		} else {
			continue
		}
		if !found || d > wait {
			wait, found = d, true
		}
	}
	if dictRemaining != "" && isZero(dictRemaining) {
		if d, ok := resetWait(dictReset, now); ok && (!found || d > wait) {
			wait, found = d, true
		}
	}
	return wait, found
}

// policyWindow returns the window w of the policy called name in the
// RateLimit-Policy field lines.
func policyWindow(lines []string, name string) (time.Duration, bool) {
	for m := range members(lines) {
		if m.name != name {
			continue
		}
		if w, ok := m.param("w"); ok {
			return parseDecimal(w, time.Second)
		}
	}
	return 0, false
}

// members yields the members of a structured field, given as its field
// lines, up to maxMembers of them.
func members(lines []string) iter.Seq[sfMember] {
	return func(yield func(sfMember) bool) {
		seen := 0
		for _, line := range lines {
			for line != "" && seen < maxMembers {
				seen++
				var m sfMember
				m, line = nextMember(line)
				if !yield(m) {
					return
				}
			}
		}
	}
}

// sfMember is one member of a structured field list or dictionary (RFC
// 8941), read leniently: a string or token item with its parameters, as
// in "default";r=0;t=20, or a dictionary member key=value, as in
// remaining=0.
type sfMember struct {
	name   string // the item's content; "" for a dictionary member
	key    string // the dictionary member's key
	value  string // the dictionary member's value
	params string // ";r=0;t=20", as written
}

// nextMember splits the first member off a field line and returns it and
// the rest of the line. It never fails: what it cannot read it skips.
func nextMember(s string) (sfMember, string) {
	var m sfMember
	s = strings.TrimLeft(s, " \t")
	if strings.HasPrefix(s, `"`) {
		// A string item; escapes are kept as written, which only matters
		// for policy names that contain quotes.
		i := 1
		for i < len(s) && s[i] != '"' {
			if s[i] == '\\' {
				i++
			}
			i++
		}
		m.name = s[1:min(i, len(s))]
		if m.name == "" {
			m.name = `""` // still a string item, unlike a dictionary member
		}
		s = s[min(i+1, len(s)):]
	} else {
		end := strings.IndexAny(s, ";,")
		if end < 0 {
			end = len(s)
		}
		k, v, isDict := strings.Cut(s[:end], "=")
		if k = strings.TrimSpace(k); isDict {
			m.key, m.value = k, strings.TrimSpace(v)
		} else {
			m.name = k // a token item, for servers that leave out the quotes
		}
		s = s[end:]
	}
	end := strings.IndexByte(s, ',')
	if end < 0 {
		m.params, s = s, ""
	} else {
		m.params, s = s[:end], s[end+1:]
	}
	return m, s
}

// param returns the value of the parameter called key.
func (m sfMember) param(key string) (string, bool) {
	p := m.params
	for p != "" {
		var kv string
		kv, p, _ = strings.Cut(p, ";")
		if k, v, _ := strings.Cut(kv, "="); strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// resetWait reads a reset value: Unix milliseconds from 1e12 on, Unix
// seconds from 1e9 on, seconds from now below that. A fraction rounds up.
func resetWait(v string, now time.Time) (time.Duration, bool) {
	secs, ok := parseCount(v)
	if !ok {
		return 0, false
	}
	switch {
	case secs >= 1e15:
		return maxDuration, true // past the year 33658 in milliseconds
	case secs >= 1e12:
		return time.UnixMilli(secs).Sub(now), true
	case secs >= 1e9:
		return time.Unix(secs, 0).Sub(now), true
	}
	return time.Duration(secs) * time.Second, true
}

// parseDecimal reads a non-negative decimal number of units, with an
// optional fraction that rounds up to the next whole unit. A number too
// large for a Duration saturates at the largest one.
func parseDecimal(v string, unit time.Duration) (time.Duration, bool) {
	n, ok := parseCount(v)
	if !ok {
		return 0, false
	}
	if n > int64(maxDuration/unit) {
		return maxDuration, true
	}
	return time.Duration(n) * unit, true
}

// parseCount reads one or more ASCII digits, optionally followed by a dot
// and one or more digits, surrounded by optional blanks, and returns the
// number rounded up to an integer, saturating at math.MaxInt64.
func parseCount(v string) (int64, bool) {
	v = trimBlanks(v)
	intPart, frac, hasDot := strings.Cut(v, ".")
	if intPart == "" || hasDot && frac == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(intPart); i++ {
		c := intPart[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (math.MaxInt64-9)/10 {
			n = math.MaxInt64 // saturated; keep checking the syntax
			continue
		}
		n = n*10 + int64(c-'0')
	}
	up := false
	for i := 0; i < len(frac); i++ {
		c := frac[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		up = up || c != '0'
	}
	if up && n < math.MaxInt64 {
		n++
	}
	return n, true
}

// isZero reports whether v is a number that is zero, such as "0" or "0.0".
func isZero(v string) bool {
	n, ok := parseCount(v)
	return ok && n == 0
}

// firstValue returns the first value of the header with canonical key k.
func firstValue(h http.Header, k string) (string, bool) {
	if vs := h[k]; len(vs) > 0 {
		return vs[0], true
	}
	return "", false
}

// clampWait limits d to [0, limit].
func clampWait(d, limit time.Duration) time.Duration {
	return max(0, min(d, limit))
}

// hdrDate is the canonical key of the response's Date header.
const hdrDate = "Date"

// quotaLeft returns how many calls a response's rate limit headers say
// remain before the quota resets, and how long until the reset. When
// several forms or policies say so, the fewest calls win, and among equal
// counts the latest reset. It reports false when no header names both a
// count and a reset.
func quotaLeft(h http.Header, now time.Time) (left int64, reset time.Duration, ok bool) {
	return quotaLeftOf(h, quotaForms(h), now)
}

// quotaFields is what quotaForms found of the header forms that carry a
// count, so that quotaLeftOf need not look them up again.
type quotaFields struct {
	dict   []string // RateLimit's field lines
	remain string   // RateLimit-Remaining's first value
	xRem   string   // X-RateLimit-Remaining's first value
}

// quotaForms looks up the forms that carry a count, once.
func quotaForms(h http.Header) quotaFields {
	return quotaFields{dict: h[hdrRateLimit], remain: firstOr(h, hdrRateLimitRemain), xRem: firstOr(h, hdrXRateLimitRemain)}
}

// any reports whether some form carries a count.
func (q quotaFields) any() bool { return len(q.dict) > 0 || q.remain != "" || q.xRem != "" }

// quotaLeftOf is quotaLeft, of the forms that quotaForms found in h.
func quotaLeftOf(h http.Header, q quotaFields, now time.Time) (left int64, reset time.Duration, ok bool) {
	take := func(n int64, d time.Duration) {
		if !ok || n < left || n == left && d > reset {
			left, reset, ok = n, max(d, 0), true
		}
	}
	var dict [2]string // the dictionary form: remaining=, reset=
	for m := range members(q.dict) {
		switch {
		case m.key == "remaining":
			dict[0] = m.value
		case m.key == "reset":
			dict[1] = m.value
		case m.name != "":
			r, rok := m.param("r")
			tv, tok := m.param("t")
			n, nok := parseCount(r)
			d, dok := parseDecimal(tv, time.Second)
			if rok && tok && nok && dok {
				take(n, d)
			}
		}
	}
	pairs := [...][2]string{dict, {q.remain, hdrRateLimitReset}, {q.xRem, hdrXRateLimitReset}}
	for i, p := range pairs {
		if i > 0 {
			// Look the reset up only when there is a count.
			if p[0] != "" {
				p[1] = firstOr(h, p[1])
			}
		}
		if p[0] == "" || p[1] == "" {
			continue
		}
		n, nok := parseCount(p[0])
		d, dok := resetWait(p[1], now)
		if nok && dok {
			take(n, d)
		}
	}
	return left, reset, ok
}

// policy is one quota a server publishes in RateLimit-Policy: q calls per
// w.
type policy struct {
	q int
	w time.Duration
}

// policies returns the quotas of the RateLimit-Policy field lines, up to
// maxMembers of them; members without a valid q and w are skipped.
func policies(lines []string) []policy {
	var ps []policy
	for m := range members(lines) {
		q, qok := m.param("q")
		w, wok := m.param("w")
		if !qok || !wok {
			continue
		}
		n, nok := parseCount(q)
		d, dok := parseDecimal(w, time.Second)
		if nok && dok && n > 0 && n <= math.MaxInt32 && d > 0 {
			ps = append(ps, policy{int(n), d})
		}
	}
	return ps
}

// firstOr returns the first value of the header with canonical key k, or
// "".
func firstOr(h http.Header, k string) string {
	v, _ := firstValue(h, k)
	return v
}

// trimBlanks removes spaces and tabs around v: strings.Trim, without
// building a set on each call.
func trimBlanks(v string) string {
	for v != "" && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for v != "" && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}
