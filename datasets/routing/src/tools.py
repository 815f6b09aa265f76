"""Hand-written tool and response_format definitions used by some items."""


def fn(name, description, properties, required=None):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required or list(properties),
            },
        },
    }


WEATHER = fn("get_weather", "Current weather for a city", {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}, ["city"])
SEARCH = fn("web_search", "Search the web and return the top results", {"query": {"type": "string"}})
CALENDAR = fn("create_event", "Create a calendar event", {"title": {"type": "string"}, "start": {"type": "string", "format": "date-time"}, "minutes": {"type": "integer"}})
SQL = fn("run_sql", "Run a read-only SQL query against the analytics warehouse", {"query": {"type": "string"}})
STOCK = fn("get_quote", "Latest price of a ticker", {"ticker": {"type": "string"}})
TIMER = fn("set_timer", "Start a countdown timer", {"seconds": {"type": "integer"}, "label": {"type": "string"}})
EMAIL = fn("send_email", "Send an email on the user's behalf", {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}})
FILES = fn("read_file", "Read a file from the repository", {"path": {"type": "string"}})
SHELL = fn("run_shell", "Run a shell command in the sandbox and return stdout and stderr", {"cmd": {"type": "string"}})
TICKETS = fn("search_tickets", "Search the support ticket system", {"text": {"type": "string"}, "status": {"type": "string"}})
FLIGHTS = fn("search_flights", "Find flights between two airports on a date", {"from": {"type": "string"}, "to": {"type": "string"}, "date": {"type": "string"}})
TRANSLATE = fn("translate", "Translate text with the company glossary", {"text": {"type": "string"}, "target": {"type": "string"}})
METRICS = fn("query_metrics", "Query time series from the monitoring system", {"expr": {"type": "string"}, "range": {"type": "string"}})
DEPLOY = fn("rollout_status", "Status of a deployment rollout", {"service": {"type": "string"}})
CRM = fn("lookup_customer", "Look a customer up in the CRM by email", {"email": {"type": "string"}})

JSON_OBJECT = {"type": "json_object"}


def schema(name, properties, required=None):
    return {
        "type": "json_schema",
        "json_schema": {
            "name": name,
            "strict": True,
            "schema": {
                "type": "object",
                "properties": properties,
                "required": required or list(properties),
                "additionalProperties": False,
            },
        },
    }


SENTIMENT = schema("sentiment", {"label": {"type": "string", "enum": ["positive", "neutral", "negative"]}})
CONTACT = schema("contact", {"name": {"type": "string"}, "email": {"type": "string"}, "phone": {"type": "string"}})
INVOICE = schema("invoice", {"number": {"type": "string"}, "total": {"type": "number"}, "currency": {"type": "string"}, "due": {"type": "string"}})
PLAN = schema("plan", {"phases": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "weeks": {"type": "integer"}, "risks": {"type": "array", "items": {"type": "string"}}}}}})
EMAIL_DRAFT = schema("email", {"subject": {"type": "string"}, "body": {"type": "string"}})
QUIZ = schema("quiz", {"questions": {"type": "array", "items": {"type": "object", "properties": {"q": {"type": "string"}, "a": {"type": "string"}}}}})
