"""Column and value vocabulary shared by `app/` and `training/`: no string literals elsewhere."""

USER_ID = "user_id"
POST_ID = "post_id"
TIMESTAMP = "timestamp"
ACTION = "action"
TARGET = "target"
TEXT = "text"
TOPIC = "topic"
SEQ = "seq"  # feed_data insertion sequence

GENDER = "gender"
AGE = "age"
COUNTRY = "country"
CITY = "city"
EXP_GROUP = "exp_group"
OS = "os"
SOURCE = "source"

VIEW = "view"
LIKE = "like"
ACTIONS = (VIEW, LIKE)

USER_COLUMNS = (USER_ID, GENDER, AGE, COUNTRY, CITY, EXP_GROUP, OS, SOURCE)
POST_COLUMNS = (POST_ID, TEXT, TOPIC)
FEED_COLUMNS = (TIMESTAMP, USER_ID, POST_ID, ACTION, TARGET)

# Fixed vocabularies: codes are positions, so a code means the same thing in training and serving.
TOPICS = ("business", "covid", "entertainment", "movie", "politics", "sport", "tech")
COUNTRIES = (
    "Russia", "Ukraine", "Belarus", "Kazakhstan", "Turkey", "Finland",
    "Azerbaijan", "Estonia", "Latvia", "Cyprus", "Switzerland",
)
OS_VALUES = ("Android", "iOS")
SOURCES = ("ads", "organic")
