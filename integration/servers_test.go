package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/apiquota/limiter"
)

// startNginx starts nginx with limit_req rate=10r/s burst=5 for the test.
// Without nginx the test is skipped, except on CI (CI=true), where nginx
// must be installed.
func startNginx(t *testing.T) *Nginx {
	t.Helper()
	ng, err := StartNginx(NginxLimit{Rate: 10, Burst: 5})
	if errors.Is(err, ErrNoNginx) && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	require.NoError(t, err)
	t.Cleanup(ng.Stop)
	return ng
}

// naive runs job through the Transport as a new user sets it up: the
// server's advertised rate as a window, New(10, time.Second).
func naive(t *testing.T, job Job) Result {
	t.Helper()
	l, err := limiter.New(10, time.Second)
	require.NoError(t, err)
	base := &http.Transport{MaxIdleConnsPerHost: job.Workers}
	t.Cleanup(base.CloseIdleConnections)
	counter := NewCounter(base)
	client := &http.Client{Transport: limiter.NewTransport(counter, l)}
	return Run(context.Background(), client, counter, job)
}

// checkLearned asserts issue 8's target against a server whose model is not
// the limiter's: every call succeeds and at most one 429 ends after the
// first window (the Transport learns the server), not counting the calls
// already on the wire when the first 429 came back (httprate's first
// refusals come after a second, and with 16 workers under load two calls
// sent together were refused together, 3 runs in 40). These hold under any
// load: a slow machine delays calls, which only keeps them further apart.
//
// The wall time is real time, which load stretches: on a 2-core machine
// under stress-ng, 40 calls to httprate took up to 2.2x the fastest the
// server allows. So the test bounds it only where load cannot reach: no
// job beats the fastest (a bound from below that a miscount of the server's
// quota breaks), and none takes loadRoom times it (a Transport that stalls
// after a 429, or paces at a third of the rate, breaks it). The target of
// issue 8, within 1.5x of the fastest, is measured and reported by
// cmd/measure and the README's table, on a quiet machine.
func checkLearned(t *testing.T, res Result, fastest time.Duration) {
	t.Helper()
	learnt := 0
	if first := res.FirstThrottled(); first >= 0 {
		learnt = res.ThrottledAfter(first + time.Second)
	}
	t.Logf("%d calls: %d requests, %d x 429 (%d after the first second, of them %d sent after the first 429 came back; %d after the first throttled second), wall %v = %.2fx the fastest %v, failed %d %v",
		res.Calls, len(res.Attempts), res.Throttled(), res.ThrottledAfter(time.Second), res.Unforeseen(time.Second), learnt,
		res.Wall.Round(time.Millisecond), float64(res.Wall)/float64(fastest), fastest, res.Failed, res.Errors)
	assert.Zero(t, res.Failed, "every call succeeds: %v", res.Errors)
	assert.Equal(t, res.Calls+res.Throttled(), len(res.Attempts), "one request per call and per 429, no other retry")
	assert.LessOrEqual(t, res.Unforeseen(time.Second), 1, "at most one 429 after the first window, of the calls sent after the first 429")
	assert.GreaterOrEqual(t, res.Wall, fastest-fastestSlack, "no client beats the fastest the server allows")
	assert.LessOrEqual(t, res.Wall, fastest*loadRoom, "within %dx of the fastest, even under load", loadRoom)
}

// loadRoom is how many times the fastest a job may take in a test: room
// for a loaded machine, where the 1.5x target is not measured.
const loadRoom = 3

// fastestSlack is how far a job may seem to beat the fastest: the fastest
// is reckoned from an instant a little before the job starts (a loaded
// machine stretches the gap), and httprate's origin is read within a
// little of the instant its windows start.
const fastestSlack = 200 * time.Millisecond

func TestNginxLimitReq(t *testing.T) {
	ng := startNginx(t)
	const calls = 40
	// limit_req rate=10r/s burst=5 nodelay admits 6 at once, then one per
	// 100 ms: call 40 cannot be admitted before 3.4 s.
	fastest := time.Duration(calls-6) * 100 * time.Millisecond
	for _, workers := range []int{4, 16} {
		t.Run(fmt.Sprintf("%d workers", workers), func(t *testing.T) {
			res := naive(t, Job{URL: ng.URL + "/api/items", Key: t.Name(), Calls: calls, Workers: workers})
			checkLearned(t, res, fastest)
		})
	}
}

func TestNginxStatedAsBucket(t *testing.T) {
	// Stated as what it is, limit_req rate=10r/s burst=5 is a bucket of 6
	// draining one per 100 ms: no call earns a 429, not even the first
	// window's, and learning has nothing to add (it is off here).
	ng := startNginx(t)
	for _, workers := range []int{4, 16} {
		t.Run(fmt.Sprintf("%d workers", workers), func(t *testing.T) {
			l, err := limiter.New(100, 10*time.Second, limiter.WithBucket(6, 100*time.Millisecond))
			require.NoError(t, err)
			base := &http.Transport{MaxIdleConnsPerHost: workers}
			t.Cleanup(base.CloseIdleConnections)
			counter := NewCounter(base)
			tr := limiter.NewTransport(counter, l)
			tr.DisableLearning = true
			res := Run(context.Background(), &http.Client{Transport: tr}, counter,
				Job{URL: ng.URL + "/api/items", Key: t.Name(), Calls: 40, Workers: workers})
			assert.Zero(t, res.Throttled(), "429s")
			assert.Zero(t, res.Failed, "failed calls")
		})
	}
}

func TestNginxCountsEachKey(t *testing.T) {
	// The harness itself: without a limiter, 10 calls at once to the
	// limited location earn exactly 4 x 429 (burst=5 admits 6), and each
	// key has its own bucket.
	ng := startNginx(t)
	for _, key := range []string{"a", "b"} {
		counter := NewCounter(nil)
		res := Run(context.Background(), &http.Client{Transport: counter}, counter,
			Job{URL: ng.URL + "/api/items", Key: key, Calls: 10, Workers: 1})
		assert.Equal(t, 4, res.Throttled(), "key %s", key)
		assert.Equal(t, 4, res.Failed, "key %s", key)
	}
}

func TestHTTPRate(t *testing.T) {
	h, origin := HTTPRate(10, time.Second)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	const calls = 40
	for _, workers := range []int{4, 16} {
		t.Run(fmt.Sprintf("%d workers", workers), func(t *testing.T) {
			// httprate's fastest depends on where in its window the job
			// starts: from 3.0 to 4.0 s.
			fastest := HTTPRateFastest(origin, time.Now(), calls, 10, time.Second)
			res := naive(t, Job{URL: srv.URL + "/api/items", Key: t.Name(), Calls: calls, Workers: workers})
			checkLearned(t, res, fastest)
		})
	}
}

func TestHTTPRateFastest(t *testing.T) {
	// The phase decides: from the start of one of httprate's windows, the
	// first 10 calls fill it, and their count weighs on the next.
	origin := time.Unix(1_800_000_000, 300_000_000)
	ms := float64(time.Millisecond)
	assert.InDelta(t, 3950*ms, float64(HTTPRateFastest(origin, origin, 40, 10, time.Second)), ms)
	assert.InDelta(t, 3950*ms, float64(HTTPRateFastest(origin, origin.Add(time.Hour), 40, 10, time.Second)), ms)
	assert.InDelta(t, 3450*ms, float64(HTTPRateFastest(origin, origin.Add(500*time.Millisecond), 40, 10, time.Second)), ms)
	assert.Equal(t, time.Duration(0), HTTPRateFastest(origin, origin, 10, 10, time.Second))
}

func TestUnforeseen(t *testing.T) {
	// Two calls on the wire together are refused together at 1.2 s: one
	// lesson. A call sent after that refusal came back and refused again
	// counts, and so would any other; none in the first second counts.
	ms := time.Millisecond
	res := Result{Attempts: []Attempt{
		{Sent: 100 * ms, At: 150 * ms, Status: http.StatusOK},
		{Sent: 1100 * ms, At: 1200 * ms, Status: http.StatusTooManyRequests},
		{Sent: 1150 * ms, At: 1210 * ms, Status: http.StatusTooManyRequests},
		{Sent: 1300 * ms, At: 1350 * ms, Status: http.StatusOK},
		{Sent: 1400 * ms, At: 1450 * ms, Status: http.StatusTooManyRequests},
		{Sent: 1500 * ms, At: 1550 * ms, Status: http.StatusServiceUnavailable},
	}}
	assert.Equal(t, 1, res.Unforeseen(time.Second))
	assert.Equal(t, 0, res.Unforeseen(1500*ms))
	res.Attempts[0].Status = http.StatusTooManyRequests // refused first at 150 ms
	assert.Equal(t, 3, res.Unforeseen(time.Second))
	assert.Equal(t, 0, Result{}.Unforeseen(0))
}
