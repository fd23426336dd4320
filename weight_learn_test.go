package limiter

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Learning never makes a call impossible: after a throttle fits a bucket
// of 16 to the calls the server accepted, a $batch of weight 20, which the
// configured rules admit, still goes; throttled, it is retried like any
// other call, and so is every later batch.
func TestLearnKeepsHeavyCallsPossible(t *testing.T) {
	// Without a Retry-After the throttle teaches a pacing; with one, a
	// window of the calls accepted per wait.
	for _, ra := range []string{"", "1"} {
		testHeavyCallsPossible(t, ra)
	}
}

func testHeavyCallsPossible(t *testing.T, retryAfter string) {
	synctest.Test(t, func(t *testing.T) {
		l, err := New(100, time.Minute)
		require.NoError(t, err)
		f := &fakeRT{clock: SystemClock(), reply: func(n int, _ *http.Request) (*http.Response, error) {
			switch n {
			case 16, 18: // the 17th call, and the first batch's first attempt
				if retryAfter == "" {
					return respond(http.StatusTooManyRequests), nil
				}
				return respond(http.StatusTooManyRequests, "Retry-After", retryAfter), nil
			}
			return respond(http.StatusOK), nil
		}}
		tr := NewTransport(f, l)
		tr.Cost = func(req *http.Request) int {
			if req.Method == http.MethodPost {
				return 20
			}
			return 1
		}
		for i := range 17 {
			resp, err := tr.RoundTrip(newGet(t, t.Context(), "https://api.example.com/"))
			require.NoError(t, err, "call %d", i)
			require.Equal(t, http.StatusOK, resp.StatusCode, "call %d", i)
		}
		require.Len(t, f.callsSeen(), 18, "the 17th was throttled once")
		tr.single.mu.Lock()
		pace, win := tr.single.learn.pace, tr.single.learn.win.l
		tr.single.mu.Unlock()
		if retryAfter == "" {
			require.NotNil(t, pace, "the throttle taught a pacing")
		} else {
			require.NotNil(t, win, "the throttle taught a window")
		}

		for i := range 3 {
			body := []byte(`{"requests":[]}`)
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "https://api.example.com/api/$batch", bytes.NewReader(body))
			require.NoError(t, err)
			resp, err := tr.RoundTrip(req)
			require.NoError(t, err, "batch %d", i)
			assert.Equal(t, http.StatusOK, resp.StatusCode, "batch %d: retried, not returned throttled", i)
			_, _ = io.Copy(io.Discard, resp.Body)
		}
		assert.Len(t, f.callsSeen(), 22, "the first batch twice, the others once")
	})
}

// A RateLimit-Policy that admits fewer at once than a call weighs does not
// make the call impossible: the call takes the whole policy.
func TestLearnPolicyLighterThanACall(t *testing.T) {
	tr, f, _, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(200, "RateLimit-Policy", `"burst";q=5;w=10`)))
	tr.Cost = func(*http.Request) int { return 8 }
	ctx := t.Context()
	_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
	require.NoError(t, err)
	require.NotNil(t, tr.single.learn.policy)
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1, "the policy is spent for 10 s")
	c.Advance(10 * time.Second)
	r := recv(t, ch)
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.resp.StatusCode)
	assert.Len(t, f.callsSeen(), 2)
}
