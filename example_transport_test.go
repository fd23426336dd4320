package limiter_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/apiquota/limiter"
)

// exampleServer answers every request with status and body, in memory.
type exampleServer struct {
	status int
	body   string
	seen   []string
}

func (s *exampleServer) RoundTrip(req *http.Request) (*http.Response, error) {
	s.seen = append(s.seen, req.Method+" "+req.URL.Path)
	return &http.Response{
		StatusCode: s.status,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       io.NopCloser(strings.NewReader(s.body)),
		Request:    req,
	}, nil
}

// Microsoft 365 Defender's APIs answer a 429 whose wait is only in the
// JSON body. Classify teaches the Transport to read it: the limiter is
// paused for the server's 37 seconds, and the caller still gets the body.
func ExampleTransport_Classify() {
	clock := limiter.NewManualClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	l, err := limiter.New(100, time.Minute, limiter.WithClock(clock))
	if err != nil {
		panic(err)
	}
	server := &exampleServer{
		status: http.StatusTooManyRequests,
		body:   `{"error":{"code":"TooManyRequests","message":"Rate limit is exceeded. Try again in 37 seconds."}}`,
	}
	tryAgain := regexp.MustCompile(`Try again in (\d+) seconds`)

	tr := limiter.NewTransport(server, l)
	tr.MaxRetries = 0 // return the 429, to show what the Transport learned
	tr.Classify = func(resp *http.Response) (bool, time.Duration) {
		if resp.StatusCode != http.StatusTooManyRequests {
			return false, 0
		}
		var body struct {
			Error struct{ Message string }
		}
		if json.NewDecoder(resp.Body).Decode(&body) != nil {
			return true, 0 // throttled; the headers or a backoff say how long
		}
		m := tryAgain.FindStringSubmatch(body.Error.Message)
		if m == nil {
			return true, 0
		}
		secs, _ := strconv.Atoi(m[1])
		return true, time.Duration(secs) * time.Second
	}

	client := &http.Client{Transport: tr}
	resp, err := client.Get("https://api.security.microsoft.com/api/alerts")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, "paused for", l.Stats().PausedUntil.Sub(clock.Now()))
	fmt.Println(len(b), "bytes of body for the caller")
	// Output:
	// 429 paused for 37s
	// 97 bytes of body for the caller
}

// The advanced hunting API allows 45 calls per minute, within the
// tenant's 100 per minute and 1,500 per hour; a $batch of 20 requests is
// charged 20. Routes and Cost say so; each request then passes its
// route's rules and the tenant's.
func ExampleTransport_Route() {
	clock := limiter.NewManualClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	tenant, err := limiter.New(100, time.Minute, limiter.WithWindow(1500, time.Hour), limiter.WithClock(clock))
	if err != nil {
		panic(err)
	}
	server := &exampleServer{status: http.StatusOK, body: `{}`}
	tr := limiter.NewTransport(server, tenant)
	if err := tr.Route("POST /api/advancedqueries/run", 45, time.Minute, limiter.WithWindow(1500, time.Hour)); err != nil {
		panic(err)
	}
	tr.Cost = func(req *http.Request) int {
		if strings.HasSuffix(req.URL.Path, "/$batch") {
			n, _ := strconv.Atoi(req.Header.Get("X-Batch-Size"))
			return n
		}
		return 1
	}
	if err := tr.Route("GET /api/machines/{id}/", 0, time.Minute); err != nil {
		fmt.Println(err)
	}

	client := &http.Client{Transport: tr}
	for range 3 {
		resp, err := client.Post("https://api.security.microsoft.com/api/advancedqueries/run", "application/json", strings.NewReader(`{"Query":"DeviceInfo | take 1"}`))
		if err != nil {
			panic(err)
		}
		resp.Body.Close()
	}
	req, _ := http.NewRequest(http.MethodPost, "https://graph.microsoft.com/v1.0/$batch", strings.NewReader(`{"requests":[]}`))
	req.Header.Set("X-Batch-Size", "20")
	resp, err := client.Do(req)
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(len(server.seen), "requests sent;", tenant.Remaining(), "calls left for the tenant this minute")
	// Output:
	// limiter: route "GET /api/machines/{id}/": limit must be positive, got 0
	// 4 requests sent; 77 calls left for the tenant this minute
}
