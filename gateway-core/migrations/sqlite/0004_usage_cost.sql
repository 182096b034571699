-- What a request cost: prompt tokens read from the provider's cache, the cost
-- in nano-units (1e-9) of the tenant's currency as an exact integer (NULL: no
-- price was known for the target that answered, or none answered), and the
-- version of the price it was computed with.
ALTER TABLE usage ADD COLUMN cached_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN cost_nanos BIGINT;
ALTER TABLE usage ADD COLUMN price_version TEXT;
