package throttleserver

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"
)

// Routes of the Defender preset.
const (
	AdvancedHuntingRoute = "POST /api/advancedqueries/run"
	IncidentsRoute       = "/api/incidents"
	BatchPath            = "/api/$batch"
)

// Defender returns the layered quotas that Microsoft's Defender APIs
// publish, with every window scaled to unit (time.Minute gives the real
// ones): per key (tenant and app) 100 calls per unit and 1,500 per 60 units;
// advanced hunting (AdvancedHuntingRoute) 45 per unit; the incidents API
// (IncidentsRoute) 50 per unit; and a $batch (POST BatchPath) charged one
// call per inner request (BatchCost). Refusals are 429 with Retry-After.
func Defender(unit time.Duration) Config {
	return Config{
		Mode:   ModeWindow,
		Limit:  100,
		Window: unit,
		Rules:  []Rule{{Limit: 1500, Window: 60 * unit}},
		Routes: []Route{
			{Pattern: AdvancedHuntingRoute, Limit: 45, Window: unit},
			{Pattern: IncidentsRoute, Limit: 50, Window: unit},
		},
		Cost: BatchCost,
	}
}

// maxBatchBody bounds how much of a $batch body BatchCost reads.
const maxBatchBody = 1 << 20

// BatchCost charges a JSON batch (POST to a path ending in "/$batch", with a
// body {"requests": [...]}, as Microsoft Graph and Defender take it) one
// call per inner request, and any other request 1. It reads the body.
func BatchCost(r *http.Request) int {
	if !IsBatch(r) || r.Body == nil {
		return 1
	}
	return BatchSize(r.Body)
}

// IsBatch reports whether r is a JSON batch: a POST to a path ending in
// "/$batch".
func IsBatch(r *http.Request) bool {
	return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/$batch")
}

// BatchSize returns the number of inner requests of the batch body
// {"requests": [...]}, at least 1; a body that is not one counts 1.
func BatchSize(body io.Reader) int {
	var batch struct {
		Requests []json.RawMessage `json:"requests"`
	}
	if err := json.NewDecoder(io.LimitReader(body, maxBatchBody)).Decode(&batch); err != nil {
		return 1
	}
	return max(len(batch.Requests), 1)
}
