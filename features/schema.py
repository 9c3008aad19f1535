"""Column names and vocabularies of the data contract (DESIGN.md), in one place."""

# events
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
TS = "ts"
SESSION_ID = "session_id"
QUERY = "query"
QUANTITY = "quantity"
PRICE = "price"
# optional: the request_id of the service response that led to the event (POST /events); not stored in the
# event store's partitions but in its side table `request_links/` (tasks/feedback.py), read by attribution
REQUEST_ID = "request_id"
# partition column of the event store (UTC date of `ts`)
DAY = "day"

# catalog
TITLE = "title"
CATEGORY = "category"
BRAND = "brand"
# not in the contract's required set; written by the generator so new items can be dated
CREATED_AT = "created_at"

VIEW = "view"
ADD_TO_CART = "add_to_cart"
PURCHASE = "purchase"
SEARCH = "search"
EVENT_TYPES = (VIEW, ADD_TO_CART, PURCHASE, SEARCH)
# event types that name an item (search events may have none)
ITEM_EVENT_TYPES = (VIEW, ADD_TO_CART, PURCHASE)

EVENT_COLUMNS = (USER_ID, ITEM_ID, EVENT_TYPE, TS, SESSION_ID, QUERY, QUANTITY, PRICE)
REQUIRED_EVENT_COLUMNS = (USER_ID, ITEM_ID, EVENT_TYPE, TS)
CATALOG_COLUMNS = (ITEM_ID, TITLE, CATEGORY, BRAND, PRICE, CREATED_AT)
REQUIRED_CATALOG_COLUMNS = (ITEM_ID, TITLE, CATEGORY)

# the id contract, shared by ingest validation, training and the service (serving/app.py): an id is
# stripped and NFC-normalised, at most MAX_ID_LENGTH characters, with no control characters (NUL included)
MAX_ID_LENGTH = 128
ID_NORMAL_FORM = "NFC"
# Unicode categories Cc: C0 controls (NUL..US), DEL and the C1 controls
ID_FORBIDDEN_PATTERN = r"[\x00-\x1f\x7f-\x9f]"
