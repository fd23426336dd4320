package throttleserver

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/apiquota/limiter"
)

// harness drives a Server on a ManualClock, straight to the handler.
type harness struct {
	t     *testing.T
	s     *Server
	clock *limiter.ManualClock
}

func newHarness(t *testing.T, cfg Config) *harness {
	clock := limiter.NewManualClock(t0)
	cfg.Now = clock.Now
	return &harness{t: t, s: New(cfg), clock: clock}
}

// do sends "METHOD /path" (with body, if any) at t0+at for DefaultKey.
func (h *harness) do(at time.Duration, target, body string) *httptest.ResponseRecorder {
	h.t.Helper()
	h.clock.Set(t0.Add(at))
	method, path, _ := strings.Cut(target, " ")
	var req *http.Request
	if body != "" {
		req = httptest.NewRequest(method, path, strings.NewReader(body))
	} else {
		req = httptest.NewRequest(method, path, nil)
	}
	rec := httptest.NewRecorder()
	h.s.ServeHTTP(rec, req)
	return rec
}

// expect checks the statuses of a run of calls: each step is sent at t0+at
// and must answer status, with Retry-After retryAfter ("" for none).
func (h *harness) expect(steps []step, target string) {
	h.t.Helper()
	for i, st := range steps {
		rec := h.do(st.at, target, "")
		assert.Equal(h.t, st.status, rec.Code, "step %d at t0+%v", i, st.at)
		assert.Equal(h.t, st.retryAfter, rec.Header().Get("Retry-After"), "step %d at t0+%v", i, st.at)
	}
}

func TestBucketLikeNginxLimitReq(t *testing.T) {
	// limit_req rate=10r/s burst=5 nodelay: 6 at once, then one per 100 ms,
	// drained continuously; 429 without Retry-After.
	h := newHarness(t, Config{Mode: ModeBucket, Limit: 10, Window: time.Second, Burst: 5})
	ms := time.Millisecond
	h.expect([]step{
		{at: 0, status: 200}, {at: 0, status: 200}, {at: 0, status: 200},
		{at: 0, status: 200}, {at: 0, status: 200}, {at: 0, status: 200},
		{at: 0, status: 429},
		{at: 100*ms - 1, status: 429},
		{at: 100 * ms, status: 200},
		{at: 100 * ms, status: 429},
		{at: 150 * ms, status: 429},
		{at: 200 * ms, status: 200},
		// Half a second drains five: five go at once, the sixth does not.
		{at: 700 * ms, status: 200}, {at: 700 * ms, status: 200}, {at: 700 * ms, status: 200},
		{at: 700 * ms, status: 200}, {at: 700 * ms, status: 200},
		{at: 700 * ms, status: 429},
		// A second idle empties it: six at once again.
		{at: 2 * time.Second, status: 200}, {at: 2 * time.Second, status: 200}, {at: 2 * time.Second, status: 200},
		{at: 2 * time.Second, status: 200}, {at: 2 * time.Second, status: 200}, {at: 2 * time.Second, status: 200},
		{at: 2 * time.Second, status: 429},
	}, "GET /v1/thing")
	st := h.s.Stats(DefaultKey)
	assert.Equal(t, 19, st.Accepted)
	assert.Equal(t, 6, st.Throttled)
}

func TestBucketWeights(t *testing.T) {
	// A $batch of 4 fills four places of a 6-place bucket at once.
	h := newHarness(t, Config{Mode: ModeBucket, Limit: 10, Window: time.Second, Burst: 5, Cost: BatchCost})
	batch := `{"requests":[{},{},{},{}]}`
	assert.Equal(t, 200, h.do(0, "POST /api/$batch", batch).Code)
	assert.Equal(t, 429, h.do(0, "POST /api/$batch", batch).Code)
	assert.Equal(t, 200, h.do(0, "GET /x", "").Code)
	assert.Equal(t, 200, h.do(0, "GET /x", "").Code)
	assert.Equal(t, 429, h.do(0, "GET /x", "").Code)
	// Four places drain in 400 ms.
	assert.Equal(t, 429, h.do(400*time.Millisecond-1, "POST /api/$batch", batch).Code)
	assert.Equal(t, 200, h.do(400*time.Millisecond, "POST /api/$batch", batch).Code)
	assert.Equal(t, 4, h.s.Stats(DefaultKey).Arrivals[0].Cost)
}

func TestGitHubPrimaryLimit(t *testing.T) {
	h := newHarness(t, Config{Mode: ModeGitHub, Limit: 3, Window: time.Hour})
	// The window opens at the first call and its reset is rounded up to a
	// whole second, so that X-RateLimit-Reset is exact.
	first := 500 * time.Millisecond
	reset := t0.Add(time.Hour + time.Second)
	headers := func(rec *httptest.ResponseRecorder) []string {
		g := rec.Header().Get
		return []string{g("X-RateLimit-Limit"), g("X-RateLimit-Remaining"), g("X-RateLimit-Used"), g("X-RateLimit-Reset"), g("X-RateLimit-Resource")}
	}
	unix := strconv.FormatInt(reset.Unix(), 10)
	for i, want := range [][]string{
		{"3", "2", "1", unix, "core"},
		{"3", "1", "2", unix, "core"},
		{"3", "0", "3", unix, "core"},
	} {
		rec := h.do(first+time.Duration(i)*time.Minute, "GET /repos/o/r", "")
		require.Equal(t, 200, rec.Code, "call %d", i)
		assert.Equal(t, want, headers(rec), "call %d", i)
	}
	rec := h.do(reset.Sub(t0)-1, "GET /repos/o/r", "")
	assert.Equal(t, http.StatusForbidden, rec.Code)
	assert.Equal(t, []string{"3", "0", "3", unix, "core"}, headers(rec))
	assert.Empty(t, rec.Header().Get("Retry-After"), "the primary limit says when in its headers")

	// At the reset a new window opens, with a new reset.
	rec = h.do(reset.Sub(t0), "GET /repos/o/r", "")
	require.Equal(t, 200, rec.Code)
	next := strconv.FormatInt(reset.Add(time.Hour).Unix(), 10)
	assert.Equal(t, []string{"3", "2", "1", next, "core"}, headers(rec))
	assert.Equal(t, 4, h.s.Stats(DefaultKey).Accepted)
}

func TestGitHubSecondaryLimit(t *testing.T) {
	h := newHarness(t, Config{Mode: ModeGitHub, Limit: 100, Window: time.Hour,
		SecondaryLimit: 2, SecondaryWindow: 10 * time.Second})
	h.expect([]step{
		{at: 0, status: 200},
		{at: time.Second, status: 200},
		{at: 2 * time.Second, status: 403, retryAfter: "8"},
		{at: 10*time.Second - 1, status: 403, retryAfter: "1"},
		{at: 10 * time.Second, status: 200},
	}, "GET /search/code")
	// The refusals of the secondary limit do not spend the primary quota.
	rec := h.do(10*time.Second, "GET /search/code", "")
	assert.Equal(t, 403, rec.Code)
	assert.Equal(t, "3", rec.Header().Get("X-RateLimit-Used"))
	assert.Equal(t, "97", rec.Header().Get("X-RateLimit-Remaining"))
}

func TestLayeredWindows(t *testing.T) {
	// 2 per 10 s and 3 per minute: the second rule speaks at 10 s.
	h := newHarness(t, Config{Limit: 2, Window: 10 * time.Second, Rules: []Rule{{Limit: 3, Window: time.Minute}}})
	h.expect([]step{
		{at: 0, status: 200},
		{at: 0, status: 200},
		{at: 0, status: 429, retryAfter: "10"},
		{at: 10 * time.Second, status: 200},
		{at: 10 * time.Second, status: 429, retryAfter: "50"},
		{at: time.Minute - 1, status: 429, retryAfter: "1"},
		{at: time.Minute, status: 200},
		{at: time.Minute, status: 200},
		{at: time.Minute, status: 429, retryAfter: "10"},
	}, "GET /api/machines")
}

func TestDefenderRoutesAndBatch(t *testing.T) {
	h := newHarness(t, Defender(time.Minute))
	for i := range 45 {
		require.Equal(t, 200, h.do(0, "POST "+"/api/advancedqueries/run", "").Code, "hunting call %d", i)
	}
	rec := h.do(0, "POST /api/advancedqueries/run", "")
	assert.Equal(t, 429, rec.Code, "the route's 45 per minute")
	assert.Equal(t, "60", rec.Header().Get("Retry-After"))
	// Other endpoints still have the tenant's 55, and a GET on the hunting
	// path is not the route.
	assert.Equal(t, 200, h.do(0, "GET /api/advancedqueries/run", "").Code)
	// A $batch of 20 is charged 20: 54 left, two batches fit, the third not.
	batch := `{"requests":[` + strings.Repeat(`{"id":"1"},`, 19) + `{"id":"20"}]}`
	assert.Equal(t, 200, h.do(time.Second, "POST /api/$batch", batch).Code)
	assert.Equal(t, 200, h.do(time.Second, "POST /api/$batch", batch).Code)
	rec = h.do(2*time.Second, "POST /api/$batch", batch)
	assert.Equal(t, 429, rec.Code)
	assert.Equal(t, "58", rec.Header().Get("Retry-After"), "room for 20 when the first 45 leave at t0+60s")
	// The 14 left go one by one.
	for i := range 14 {
		require.Equal(t, 200, h.do(3*time.Second, "GET /api/incidents", "").Code, "call %d", i)
	}
	assert.Equal(t, 429, h.do(3*time.Second, "GET /api/alerts", "").Code)

	st := h.s.Stats(DefaultKey)
	assert.Equal(t, 100, st.BusiestWindow(), "weighted by cost")
	assert.Equal(t, AdvancedHuntingRoute, st.Arrivals[0].Route)
	assert.Equal(t, 20, st.Arrivals[47].Cost)
}

func TestRouteQuotaIsPerRouteAndKey(t *testing.T) {
	h := newHarness(t, Config{Limit: 10, Window: time.Minute, Routes: []Route{
		{Pattern: "/api/", Limit: 3, Window: time.Minute},
		{Pattern: "/api/machines/{id}/", Limit: 1, Window: time.Minute},
	}})
	// The most specific pattern wins, as in ServeMux.
	assert.Equal(t, 200, h.do(0, "GET /api/machines/7/actions", "").Code)
	assert.Equal(t, 429, h.do(0, "GET /api/machines/8/actions", "").Code)
	for range 3 {
		assert.Equal(t, 200, h.do(0, "GET /api/alerts", "").Code)
	}
	assert.Equal(t, 429, h.do(0, "GET /api/alerts", "").Code)
	assert.Equal(t, 200, h.do(0, "GET /other", "").Code, "no route: the key's quota only")

	req := httptest.NewRequest(http.MethodGet, "/api/alerts", nil)
	req.Header.Set(DefaultKeyHeader, "tenant-2")
	rec := httptest.NewRecorder()
	h.s.ServeHTTP(rec, req)
	assert.Equal(t, 200, rec.Code, "another key has its own route quota")
}

func TestDateHeaderFollowsTheServersClock(t *testing.T) {
	h := newHarness(t, Config{Limit: 1})
	rec := h.do(1500*time.Millisecond, "GET /", "")
	assert.Equal(t, "Wed, 25 Nov 2026 12:00:01 GMT", rec.Header().Get("Date"))
}

func TestBatchCost(t *testing.T) {
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/api/$batch", `{"requests":[{},{},{}]}`, 3},
		{"POST", "/v1.0/$batch", `{"requests":[{}]}`, 1},
		{"POST", "/api/$batch", `{"requests":[]}`, 1},
		{"POST", "/api/$batch", `not json`, 1},
		{"GET", "/api/$batch", `{"requests":[{},{}]}`, 1},
		{"POST", "/api/machines", `{"requests":[{},{}]}`, 1},
	} {
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
		assert.Equal(t, tc.want, BatchCost(req), "%s %s %s", tc.method, tc.path, tc.body)
	}
}

func TestNewRejectsBadModesAndRoutes(t *testing.T) {
	for name, cfg := range map[string]Config{
		"unknown mode":   {Mode: "fixed"},
		"bad pattern":    {Routes: []Route{{Pattern: "GET", Limit: 1, Window: time.Second}}},
		"route limit":    {Routes: []Route{{Pattern: "/a", Window: time.Second}}},
		"rule window":    {Rules: []Rule{{Limit: 1}}},
		"negative burst": {Mode: ModeBucket, Burst: -1},
		"bucket rate":    {Mode: ModeBucket, Limit: 10, Window: 5},
		"secondary":      {Mode: ModeGitHub, SecondaryLimit: 1},
	} {
		assert.Panics(t, func() { New(cfg) }, name)
	}
}

func TestGitHubBodiesTellTheLimits(t *testing.T) {
	h := newHarness(t, Config{Mode: ModeGitHub, Limit: 1, Window: time.Hour,
		SecondaryLimit: 1, SecondaryWindow: time.Second})
	require.Equal(t, 200, h.do(0, "GET /", "").Code)
	rec := h.do(0, "GET /", "")
	require.Equal(t, 403, rec.Code)
	assert.Contains(t, rec.Body.String(), `secondary rate limit`)
	assert.Contains(t, rec.Body.String(), `#about-secondary-rate-limits"`)
	rec = h.do(time.Second, "GET /", "")
	require.Equal(t, 403, rec.Code)
	assert.Contains(t, rec.Body.String(), `"message":"API rate limit exceeded.`)
}

func TestFastest(t *testing.T) {
	get := func(n int, target string) []*http.Request {
		method, path, _ := strings.Cut(target, " ")
		reqs := make([]*http.Request, n)
		for i := range reqs {
			reqs[i] = httptest.NewRequest(method, path, nil)
		}
		return reqs
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		reqs []*http.Request
		want time.Duration
	}{
		{"window: the 301st call starts the fourth window", Config{Limit: 100, Window: 10 * time.Second}, get(301, "GET /"), 30 * time.Second},
		{"window: 300 calls", Config{Limit: 100, Window: 10 * time.Second}, get(300, "GET /"), 20 * time.Second},
		{"nginx: 6 at once, then one per 100 ms", Config{Mode: ModeBucket, Limit: 10, Window: time.Second, Burst: 5}, get(40, "GET /"), 3400 * time.Millisecond},
		{"github: fixed windows", Config{Mode: ModeGitHub, Limit: 5, Window: time.Second}, get(12, "GET /"), 2 * time.Second},
		{"github: secondary", Config{Mode: ModeGitHub, Limit: 100, Window: time.Hour, SecondaryLimit: 2, SecondaryWindow: time.Second}, get(5, "GET /"), 2 * time.Second},
		{"layered: the route's 45 per minute", Defender(time.Minute), get(46, "POST /api/advancedqueries/run"), time.Minute},
		{"layered: the hour's 1,500", Defender(time.Minute), get(1501, "GET /api/machines"), time.Hour},
	} {
		assert.Equal(t, tc.want, Fastest(tc.cfg, tc.reqs), tc.name)
	}
	assert.Panics(t, func() {
		Fastest(Config{Limit: 2, Cost: BatchCost}, []*http.Request{httptest.NewRequest("POST", "/api/$batch", strings.NewReader(`{"requests":[{},{},{}]}`))})
	})
}

func TestWaitInBody(t *testing.T) {
	h := newHarness(t, Config{Limit: 1, Window: time.Minute, WaitInBody: true})
	require.Equal(t, 200, h.do(0, "GET /api/machines", "").Code)
	rec := h.do(48*time.Second, "GET /api/machines", "")
	require.Equal(t, 429, rec.Code)
	assert.Empty(t, rec.Header().Get("Retry-After"))
	assert.JSONEq(t, `{"error":{"code":"TooManyRequests","message":"Rate limit is exceeded. Try again in 12 seconds."}}`, rec.Body.String())
}
