package limiter

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClassifyDefaults(t *testing.T) {
	tr := &Transport{}
	for _, tc := range []struct {
		name      string
		status    int
		kv        []string
		throttled bool
		wait      time.Duration // when throttled; -1: a backoff
		pause     time.Duration
	}{
		{"200", 200, nil, false, 0, 0},
		{"200 spent", 200, []string{"X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "9"}, false, 0, 9 * time.Second},
		{"429", 429, nil, true, -1, -1},
		{"429 Retry-After", 429, []string{"Retry-After", "4"}, true, 4 * time.Second, 4 * time.Second},
		{"503", 503, nil, false, 0, 0},
		{"503 Retry-After", 503, []string{"Retry-After", "2"}, true, 2 * time.Second, 2 * time.Second},
		{"403", 403, nil, false, 0, 0},
		{"403 some left", 403, []string{"X-RateLimit-Remaining", "12", "X-RateLimit-Reset", "30"}, false, 0, 0},
		{"403 secondary", 403, []string{"Retry-After", "60"}, true, time.Minute, time.Minute},
		{"403 primary", 403, []string{"X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "30"}, true, 30 * time.Second, 30 * time.Second},
		{"429 uncapped", 429, []string{"Retry-After", "3600"}, true, time.Hour, time.Hour},
		{"404", 404, []string{"Retry-After", "5"}, false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := respond(tc.status, tc.kv...)
			hk := kindsOf(resp.Header)
			hk.readQuota(resp.Header, t0)
			v := tr.classify(resp, t0, 0, &hk)
			assert.Equal(t, tc.throttled, v.throttled)
			if tc.wait < 0 {
				assert.False(t, v.named)
				assert.GreaterOrEqual(t, v.wait, 500*time.Millisecond)
				assert.LessOrEqual(t, v.wait, time.Second)
				assert.Equal(t, v.wait, v.pause)
				return
			}
			assert.Equal(t, tc.wait, v.wait)
			assert.Equal(t, tc.pause, v.pause)
		})
	}
}

// A GitHub secondary limit: 403 with Retry-After is throttling; the
// Transport pauses and retries.
func TestTransport403SecondaryLimitRetries(t *testing.T) {
	tr, f, l, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(403, "Retry-After", "60"), answer(200)))
	ch := roundTrip(tr, newGet(t, context.Background(), "https://api.github.com/repos"))
	blockUntil(t, c, 1)
	assert.Equal(t, t0.Add(time.Minute), l.Stats().PausedUntil)
	c.Advance(time.Minute)
	r := recv(t, ch)
	require.NoError(t, r.err)
	assert.Equal(t, 200, r.resp.StatusCode)
	assert.Len(t, f.callsSeen(), 2)
}

// A plain 403 is the caller's business: returned, no pause.
func TestTransportPlain403NotThrottled(t *testing.T) {
	tr, f, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(403)))
	resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.github.com/repos"))
	require.NoError(t, err)
	assert.Equal(t, 403, resp.StatusCode)
	assert.Len(t, f.callsSeen(), 1)
	assert.True(t, l.Stats().PausedUntil.IsZero())
}

// defenderWait reads a Microsoft 365 Defender style throttle: a 429 whose
// wait is only in its JSON body.
var defenderWait = regexp.MustCompile(`Try again in (\d+) seconds`)

func classifyDefender(resp *http.Response) (bool, time.Duration) {
	if resp.StatusCode != http.StatusTooManyRequests {
		return false, 0
	}
	var body struct {
		Error struct{ Message string } `json:"error"`
	}
	if json.NewDecoder(resp.Body).Decode(&body) != nil {
		return true, 0
	}
	m := defenderWait.FindStringSubmatch(body.Error.Message)
	if m == nil {
		return true, 0
	}
	s, _ := strconv.Atoi(m[1])
	return true, time.Duration(s) * time.Second
}

const defenderBody = `{"error":{"code":"TooManyRequests","message":"Rate limit is exceeded. Try again in 37 seconds."}}`

func TestTransportClassifyReadsBody(t *testing.T) {
	c := NewManualClock(t0)
	l, err := New(100, time.Minute, WithClock(c))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: replies(answer(429))}
	body := &trackedBody{r: strings.NewReader(defenderBody)}
	tr := NewTransport(roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := f.RoundTrip(req)
		resp.Body = body
		return resp, err
	}), l)
	tr.MaxRetries = 0
	tr.Classify = classifyDefender
	resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.security.microsoft.com/api/alerts"))
	require.NoError(t, err)
	assert.Equal(t, t0.Add(37*time.Second), l.Stats().PausedUntil, "the wait in the body")
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, defenderBody, string(got), "the caller still gets the whole body")
	assert.NoError(t, resp.Body.Close())
	assert.Equal(t, int32(1), body.closed.Load(), "closing it closes the server's body")
}

// Classify adds to the default rules; it does not replace them.
func TestTransportClassifyFalseKeepsDefaults(t *testing.T) {
	tr, _, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "3")))
	tr.MaxRetries = 0
	asked := 0
	tr.Classify = func(*http.Response) (bool, time.Duration) { asked++; return false, 0 }
	_, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
	require.NoError(t, err)
	assert.Equal(t, 1, asked)
	assert.Equal(t, t0.Add(3*time.Second), l.Stats().PausedUntil)
}

// A wait past MaxRetryAfter: no retry, the response at once, the limiter
// paused for MaxRetryAfter.
func TestTransportWaitPastMaxRetryAfterNotRetried(t *testing.T) {
	tr, f, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "3600"), answer(200)))
	var heard []time.Duration
	tr.OnThrottle = func(_ *http.Request, _ *http.Response, d time.Duration) { heard = append(heard, d) }
	resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode)
	assert.Len(t, f.callsSeen(), 1, "a retry at the cap could only earn another 429")
	assert.Equal(t, t0.Add(5*time.Minute), l.Stats().PausedUntil)
	assert.Equal(t, []time.Duration{5 * time.Minute}, heard)
}

// Absolute times are read against the server's Date: a server whose clock
// is 10 s behind ours still gets the full wait it asks for.
func TestTransportReadsResetsAgainstDate(t *testing.T) {
	srv := t0.Add(-10 * time.Second)
	for _, tc := range []struct {
		name string
		kv   []string
	}{
		{"HTTP-date", []string{"Retry-After", srv.Add(30 * time.Second).Format(http.TimeFormat)}},
		{"Unix reset", []string{"X-RateLimit-Remaining", "0", "X-RateLimit-Reset", strconv.FormatInt(srv.Add(30*time.Second).Unix(), 10)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv := append([]string{"Date", srv.Format(http.TimeFormat)}, tc.kv...)
			tr, _, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, kv...)))
			tr.MaxRetries = 0
			_, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
			require.NoError(t, err)
			assert.Equal(t, t0.Add(30*time.Second), l.Stats().PausedUntil)
		})
	}
}

// The deadline is real time, whatever date the limiter's clock shows: a
// ManualClock in January and a deadline 20 s from now leave room for a
// 5 s Retry-After.
func TestTransportDeadlineIsRealTime(t *testing.T) {
	tr, f, _, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "5"), answer(200)))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1, "waits for the retry")
	c.Advance(5 * time.Second)
	r := recv(t, ch)
	require.NoError(t, r.err)
	assert.Equal(t, 200, r.resp.StatusCode)
	assert.Len(t, f.callsSeen(), 2)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
