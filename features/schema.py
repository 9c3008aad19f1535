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
